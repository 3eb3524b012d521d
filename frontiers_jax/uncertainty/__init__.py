"""Uncertainty: evidential regression and classification,
deep ensembles and MC dropout, and the metrics that score them (calibration
error, reliability bins, OOD AUROC, entropy decompositions)."""
