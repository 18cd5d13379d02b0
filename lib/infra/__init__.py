"""Infrastructure: the config schema and profiles, the run directory, checkpoints, paths, worker
processes and progress bars. The bottom layer: it imports nothing else of lib."""
