"""Algorithmic bias: the debiasing variational autoencoder (DB-VAE). The
coloured-background data are in `frontiers_jax.data.bias`."""
