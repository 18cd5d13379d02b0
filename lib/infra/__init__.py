"""Infrastructure: the config schema (config, config_error, experiment_config, dataset_table) and the
profiles' numbers (profiles), the run directory and its training log (rundir, runlog), checkpoints,
paths, the run context of a process (distributed), the worker-process pool (processes), verified
downloads (download) and progress bars. The bottom layer: it imports nothing else of lib."""
