"""Measurement: the classifier features, Fréchet distance and KID, Inception FID, the toy metrics and
the statistics over seeds. Imports the paper's modules (lib/) and lib.infra, never lib.experiment."""
