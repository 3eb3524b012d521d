"""Denoising diffusion (Ho et al. 2020): the process, the network, the samplers
and the evaluation (FID, bits/dim)."""
