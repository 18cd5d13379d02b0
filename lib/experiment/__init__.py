"""The experiment's orchestration: training runs over seeds, sampler sweeps, the related-methods
experiment, notebook 08's study of pretrained weights, the step timer, evaluation of image cells,
paired comparisons, tables, reports, plots and published numbers. The top layer: it imports everything below (lib/, lib.related, lib.measure, lib.infra)."""
