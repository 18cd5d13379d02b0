"""The experiment's orchestration: training runs over seeds, sampler sweeps, the related-methods
experiment, evaluation of image cells, paired comparisons, tables, reports, plots and published
numbers. The top layer: it imports everything below (lib/, lib.related, lib.measure, lib.infra)."""
