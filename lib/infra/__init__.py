"""Infrastructure: the config schema and profiles, the run directory and its training log (runlog),
checkpoints, paths, the run context of a process (distributed), worker processes and progress bars. The bottom layer: it imports nothing else of lib."""
