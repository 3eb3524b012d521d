"""Adversarial examples (the lecture's "how networks fail"): attacks (FGSM,
PGD, Square), AutoAttack's APGD, expectation over transformation, and the
robustness evaluation that runs them all on a trained classifier."""
