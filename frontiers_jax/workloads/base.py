"""What a workload supplies to the shared loop, and helpers most workloads use.

The loop (`frontiers_jax.training.loop`) owns data order, sharding, logging,
evaluation schedule, checkpoints and progress. A workload owns the math:

  validate()                         -> raises UsageError for bad keys
  load_data()                        -> {'train': arrays, 'test': arrays, ...}
  train_batches(data, batch, seed,
                process_index, process_count) -> batches(step), a pure function
                                        of (seed, step) (default: epochs of
                                        shuffled examples)
  create_state(rng, batch)           -> TrainState (pure; jitted by the loop)
  train_step(state, batch, rng)      -> (state, metrics)  per-step means
  eval_step(state, batch)            -> metric *sums* over real rows, and 'count'
                                        (or 'count_<metric>' for its own divisor)
  derived_metrics(means)             -> metrics computed from the eval means
  final_metrics(state, data)         -> scores of the trained model
  figures(state, data, history, dir) -> paths of the PNGs it wrote
  report(state, data, history, dir)  -> (final_metrics, figures): what the
                                        loop calls after training
  describe(state, flops_per_step)    -> lines printed before the first step
  perf_spec()                        -> PerfSpec: report tokens/s and MFU
  save_artifacts(workdir)            -> writes what the model needs besides
                                        config and parameters (a tokenizer)
  start_from(state, params)          -> a fresh state with another run's
                                        parameters (`config.init_from`)

A trained run comes back without its data (`frontiers_jax.runs.load_run`):

  load_artifacts(workdir)            -> reads what save_artifacts wrote
  build_model()                      -> the flax module, from config and artifacts
  inference_params(state)            -> the parameters to use, of a restored
                                        state as nested dicts (default: params)

After training, capabilities that some workloads have (`supports(name)` says
which; the commands check it before loading a checkpoint):

  evaluate(state, data, workdir, mesh, say) -> path of the result it wrote
  check_sample(SampleRequest)        -> the checked plan that `sample` takes
  sample(state, data, plan, out)     -> paths of the files it wrote
  sweep_figures(runs, fig_dir)       -> figures that compare the runs of a
                                        sweep (default: none; a table is always
                                        written)

`train_step` and `eval_step` are pure functions of their arguments; the loop
jits each once. `batch` holds this step's global batch (sharded over devices);
eval batches carry a `mask` (1 real row, 0 padding).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from frontiers_jax.data import pipeline
from frontiers_jax.training.optim import make_optimizer

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class PerfSpec:
  """What the loop needs to report tokens/s and model FLOPs utilization."""
  tokens_per_example: int
  compute_dtype: Any  # the peak matmul rate is measured in this dtype
  # XLA's cost analysis counts a loop body once: a step whose work runs in a
  # loop of n iterations (e.g. gradient accumulation) sets n here.
  loop_iterations: int = 1


@dataclasses.dataclass(frozen=True)
class SampleRequest:
  """What `frontiers sample` asks of a trained model; each workload reads its
  own fields and checks them in `check_sample`."""
  prompts: tuple[str, ...] = ()  # text to continue, or a class name (diffusion)
  seed: int = 0
  # Language models: continuations of each prompt, decoded as one batch.
  num_tokens: int = 500
  temperature: float = 0.8
  top_k: int = 200
  top_p: float = 1.0
  num_samples: int = 1
  # Diffusion: a grid of images.
  sampler: str = 'ddim'
  steps: int = 0                 # 0: the config's (ddpm: all T)
  num: int = 64
  label: int | None = None
  guidance: float = 3.0


CAPABILITIES = ('evaluate', 'sample')


class Workload:
  """Base class: subclasses set `name` and implement the methods below."""

  name = ''
  # Splits evaluated besides 'test'; their keys are prefixed `eval_<split>/`.
  extra_eval_splits: tuple[str, ...] = ()

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def validate(self) -> None:
    """Checks workload keys; raise `UsageError` on bad values."""

  def load_data(self) -> dict[str, dict[str, Any]]:
    raise NotImplementedError

  def train_batches(self, data, global_batch: int, seed: int, process_index: int = 0,
                    process_count: int = 1) -> Callable[[int], dict]:
    """`batches(step)`: this process's rows of global batch `step`."""
    return pipeline.TrainBatches(data['train'], global_batch, seed, process_index,
                                 process_count)

  def create_state(self, rng: jax.Array, batch: Batch) -> train_state.TrainState:
    raise NotImplementedError

  def train_step(self, state, batch: Batch, rng: jax.Array):
    raise NotImplementedError

  def eval_step(self, state, batch: Batch) -> Metrics:
    raise NotImplementedError

  def derived_metrics(self, means: dict[str, float]) -> dict[str, float]:
    """Metrics that follow from the eval means (e.g. perplexity = exp(loss))."""
    return {}

  def final_metrics(self, state, data) -> dict[str, float]:
    """Scores of the trained model that per-batch means cannot give (e.g. an
    AUROC over the whole test split); the loop adds them to `summary['final']`."""
    return {}

  def figures(self, state, data, history: list[dict], fig_dir: str) -> list[str]:
    return []

  def report(self, state, data, history: list[dict],
             fig_dir: str) -> tuple[dict[str, float], list[str]]:
    """What the loop calls after training: `final_metrics`, then `figures`.
    A workload whose two share their work overrides it to do that work once."""
    return self.final_metrics(state, data), self.figures(state, data, history, fig_dir)

  def describe(self, state, flops_per_step: float | None) -> list[str]:
    """Lines about the model printed before training (e.g. its size)."""
    return []

  def perf_spec(self) -> PerfSpec | None:
    """None: the progress line shows examples/s only."""
    return None

  # -- A trained model without data ------------------------------------------

  def save_artifacts(self, workdir: str) -> None:
    """Writes, once the data are loaded and before training, what the model
    needs besides its config and parameters (the loop calls it)."""

  def load_artifacts(self, workdir: str) -> None:
    """Reads what `save_artifacts` wrote, in place of loading data."""

  def build_model(self) -> Any:
    """The flax module, built from the config and `load_artifacts` alone."""
    raise NotImplementedError

  def start_from(self, state, params):
    """`state` with `params` from another run (`config.init_from`)."""
    return state.replace(params=params)

  def inference_params(self, state: dict) -> Any:
    """The parameters to sample and evaluate with, from a train state
    restored as nested dicts."""
    return state['params']

  # -- Capabilities after training --------------------------------------------

  def supports(self, capability: str) -> bool:
    """Whether this workload implements `capability` (one of CAPABILITIES)."""
    return getattr(type(self), capability) is not getattr(Workload, capability)

  def evaluate(self, state, data, workdir: str, mesh, say: Callable[[str], None] = print
               ) -> str:
    """The evaluation of a trained model: writes its results in `workdir`,
    says what it measured, returns the path of the main result."""
    raise NotImplementedError(f'{self.name} has no evaluation')

  def check_sample(self, request: SampleRequest) -> dict:
    """Checks `request` before anything compiles; returns the plan for
    `sample`, with `name`: the file name of its output."""
    raise NotImplementedError(f'{self.name} cannot sample')

  def sample(self, state, data, plan: dict, out: str) -> list[str]:
    """Draws what `plan` asks for and writes it to `out`.<ext>."""
    raise NotImplementedError(f'{self.name} cannot sample')

  @staticmethod
  def sweep_figures(runs: dict[str, dict], fig_dir: str) -> list[str]:
    """Figures comparing the runs of a sweep: {value: {summary, history,
    config, workdir}}."""
    return []

  # -- Helpers for subclasses ------------------------------------------------

  def new_state(self, apply_fn: Callable, params) -> train_state.TrainState:
    """A TrainState with the optimizer the config names."""
    tx = make_optimizer(self.config.optim, self.config.num_steps)
    return train_state.TrainState.create(apply_fn=apply_fn, params=params, tx=tx)


def gradient_step(state: train_state.TrainState, loss_fn: Callable,
                  *args) -> tuple[train_state.TrainState, Metrics]:
  """One optimizer step on `loss_fn(params, *args) -> (loss, metrics)`.

  Returns the metrics with `loss` and the global gradient norm `grad_norm` added
  (the loop logs them as `train/loss`, `train/grad_norm`; a NaN or Inf in any
  gradient shows up there and stops the run).
  """
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, *args)
  state = state.apply_gradients(grads=grads)
  return state, {'loss': loss, 'grad_norm': optax.tree.norm(grads), **metrics}


def classification_sums(logits: jax.Array, labels: jax.Array,
                        mask: jax.Array) -> Metrics:
  """Masked sums of cross-entropy and correct predictions, and the count."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {'loss': jnp.sum(losses * mask), 'accuracy': jnp.sum(correct * mask),
          'count': jnp.sum(mask)}
