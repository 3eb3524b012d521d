"""Reading what a finished or interrupted run left in its workdir (for tests)."""

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp


def read_metrics(workdir) -> list[dict]:
  with open(pathlib.Path(workdir) / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def read_summary(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / 'summary.json').read_text())


def checkpoint_steps(workdir) -> list[int]:
  """Committed steps: orbax renames a finished tmp folder to the step number."""
  folder = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def restore(workdir, step: int):
  """A checkpoint as numpy arrays (no devices, so any topology restores)."""
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'default'
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=args)


def all_finite(tree) -> bool:
  """Every floating-point leaf is finite (integer leaves, e.g. step, are skipped)."""
  return all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(leaf).dtype, np.inexact))
