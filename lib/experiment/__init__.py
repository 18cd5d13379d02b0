"""The experiment's orchestration: training runs over seeds, sampler sweeps, the related-methods
experiment and the dose–response test, notebook 08's study of pretrained weights, the step timer,
evaluation of image cells, paired comparisons, tables, reports, plots and published numbers, and the
one way work fans out to worker processes (workers). The top layer: it imports everything below
(lib/, lib.related, lib.measure, lib.infra). docs/code.md maps it."""
