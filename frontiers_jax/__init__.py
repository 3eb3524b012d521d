"""frontiers_jax: the systems of MIT 6.S191's "New Frontiers" lecture, in JAX."""

__version__ = '0.1.0'
