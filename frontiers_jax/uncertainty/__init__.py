"""Uncertainty (issue #8, section 1): evidential regression and classification,
deep ensembles and MC dropout, and the metrics that score them (calibration
error, reliability bins, OOD AUROC, entropy decompositions)."""
