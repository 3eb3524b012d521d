"""Data sets by name, loaded whole into host memory as numpy arrays or text."""

from frontiers_jax.data.registry import check_available
from frontiers_jax.data.registry import DATASETS
from frontiers_jax.data.registry import IMAGE_DATASETS
from frontiers_jax.data.registry import load
from frontiers_jax.data.registry import resolve_data_dir
from frontiers_jax.data.registry import TEXT_DATASETS

__all__ = ['DATASETS', 'IMAGE_DATASETS', 'TEXT_DATASETS', 'check_available', 'load',
           'resolve_data_dir']
