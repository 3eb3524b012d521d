"""Language models (the lecture's New Frontiers II): predict the next token.

Raw text becomes tokens (`frontiers_jax.lm.tokenizers`), tokens become
vectors, and a decoder-only Transformer (`frontiers_jax.lm.model`) turns each
prefix into a probability distribution over the next token. Training
minimises the cross-entropy of the true next token at every position of
windows drawn from the text; deployment samples from the distributions one
token at a time (`frontiers_jax.lm.generate`, with a KV cache).

Two kinds of data:
  text        tiny_shakespeare or any UTF-8 file (`data.path`): the first 90 %
              for training (random windows of context + 1 tokens, drawn from
              the seed and the step), the last 10 % for validation, evaluated
              whole (every token predicted once; `pipeline.covering_windows`);
  arithmetic  n-digit additions (`frontiers_jax.lm.arithmetic`) with the loss
              on the answer, and exact-match accuracy on held-out problems:
              the task of the emergence sweep (configs/emergence.py).

Metrics: `loss` is the mean cross-entropy per predicted token (nats);
`perplexity` = exp(loss); `bits_per_byte` divides the summed loss (in bits)
by the UTF-8 bytes of the predicted text, which compares tokenizers fairly
(with the char tokenizer on ASCII text it is also the bits per character).

Gradient accumulation (`optim.accumulation_steps` = k) splits each global
batch into k micro-batches inside one train step and sums their gradients
before the single optimizer update, so a step means the same thing for every
k: only the activation memory shrinks.
"""

import functools
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax.training import train_state

from frontiers_jax import config as config_lib
from frontiers_jax import models
from frontiers_jax import plots
from frontiers_jax import streams
from frontiers_jax.data import files, pipeline, registry
from frontiers_jax.errors import UsageError, check
from frontiers_jax.lm import arithmetic, generate, model as model_lib, tokenizers
from frontiers_jax.workloads.base import PerfSpec, SampleRequest, Workload

DATASETS = ('tiny_shakespeare', 'arithmetic')
TOKENIZERS = ('char', 'byte', 'bpe')
POSITIONS = ('learned', 'rotary')
TOKENIZER_FILE = 'tokenizer.json'  # in the workdir, written before training


class LanguageModel(Workload):
  """Next-token prediction with a decoder-only Transformer."""

  name = 'lm'

  # -- Checks and data ----------------------------------------------------------

  def validate(self) -> None:
    c = self.config
    config_lib.check_choice(c, 'data.name', DATASETS)
    config_lib.check_choice(c, 'data.tokenizer', TOKENIZERS)
    config_lib.check_choice(c, 'model.positions', POSITIONS)
    config_lib.check_dtype(c)
    config_lib.check_choice(c, 'model.attention_impl', ('xla', 'cudnn'))
    m = c.model
    for key in ('num_layers', 'num_heads', 'width', 'context', 'mlp_ratio'):
      check(m[key] > 0, f'config.model.{key}', f'{m[key]} is not allowed',
            'give a whole number > 0')
    check(m.width % m.num_heads == 0, 'config.model.width',
          f'{m.width} does not split into {m.num_heads} heads',
          'give a multiple of model.num_heads')
    check(m.num_kv_heads >= 0 and (m.num_kv_heads == 0 or m.num_heads % m.num_kv_heads == 0),
          'config.model.num_kv_heads', f'{m.num_kv_heads} is not allowed',
          f'give 0 (= num_heads) or a divisor of num_heads {m.num_heads}')
    check(m.positions != 'rotary' or (m.width // m.num_heads) % 2 == 0, 'config.model.width',
          f'rotary positions need an even head size, not {m.width // m.num_heads}',
          'give width / num_heads even')
    config_lib.check_range(c, 'model.dropout', 0.0, 0.99)
    k = c.optim.accumulation_steps
    check(k > 0 and c.batch_size % k == 0, 'config.optim.accumulation_steps',
          f'{k} does not divide batch_size {c.batch_size}', 'give a divisor of batch_size')
    if c.data.name == 'arithmetic':
      check(not c.data.path, 'config.data.path', 'given for arithmetic',
            'arithmetic generates its data: leave data.path empty')
      length = arithmetic.sequence_length(c.data.digits) - 1
      check(m.context >= length, 'config.model.context',
            f'{m.context} is shorter than the {length} input tokens of a '
            f'{c.data.digits}-digit problem', f'give at least {length}')
    check(c.data.tokenizer != 'bpe' or c.data.vocab_size >= 256, 'config.data.vocab_size',
          f'{c.data.vocab_size} is not allowed for bpe', 'give at least 256')
    s = c.sample
    check_sampling(s.num_tokens, s.temperature, s.top_k, s.top_p, s.num_samples,
                   where='config.sample.')

  def load_data(self) -> dict:
    """Arrays of token ids; sets `self.tokenizer` (the model's vocabulary)."""
    c = self.config
    if c.data.name == 'arithmetic':
      self.tokenizer = arithmetic.tokenizer()
      return arithmetic.make_splits(c.data.digits, c.data.num_train, c.data.num_test,
                                    c.seed, c.data.reverse_answer)
    text = read_text(c.data.path, c.data.name, c.data.dir)
    # The char vocabulary covers the whole corpus (as nanoGPT's); BPE merges
    # are learned on the training split only.
    source = text['train'] + text['validation'] if c.data.tokenizer == 'char' else text['train']
    self.tokenizer = tokenizers.create(c.data.tokenizer, source, c.data.vocab_size)
    train = self.tokenizer.encode(text['train'])
    validation = self.tokenizer.encode(text['validation'])
    return {'train': {'tokens': train},
            'test': pipeline.covering_windows(validation, c.model.context)}

  def train_batches(self, data, global_batch, seed, process_index=0, process_count=1):
    if self.config.data.name == 'arithmetic':  # epochs over the fixed problems
      return super().train_batches(data, global_batch, seed, process_index, process_count)
    return pipeline.RandomWindows(data['train']['tokens'], self.config.model.context + 1,
                                  global_batch, seed, process_index, process_count)

  def save_artifacts(self, workdir: str) -> None:
    """The tokenizer, as `tokenizer.json`: its vocabulary or merges."""
    (epath.Path(workdir) / TOKENIZER_FILE).write_text(json.dumps(self.tokenizer.to_dict()))

  def load_artifacts(self, workdir: str) -> None:
    path = epath.Path(workdir) / TOKENIZER_FILE
    if not path.exists():  # A run from before the tokenizer was saved.
      print(f'note: {path} does not exist; rebuilding the tokenizer from the training data',
            file=sys.stderr)
      self.load_data()
      return
    try:
      self.tokenizer = tokenizers.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
      raise UsageError(str(path), f'is not a tokenizer ({type(e).__name__}: {e})',
                       'restore the file, or retrain') from None

  # -- The model ------------------------------------------------------------------

  def build_model(self) -> model_lib.Transformer:
    return self.model

  @functools.cached_property
  def model(self) -> model_lib.Transformer:
    m = self.config.model
    return model_lib.Transformer(
        vocab_size=self.tokenizer.vocab_size, context=m.context, num_layers=m.num_layers,
        num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, width=m.width,
        mlp_ratio=m.mlp_ratio, positions=m.positions, dropout=m.dropout,
        use_bias=m.use_bias, dtype=models.compute_dtype(m), attention_impl=m.attention_impl)

  def create_state(self, rng, batch) -> train_state.TrainState:
    params = self.model.init(rng, batch['tokens'][:1, :-1])['params']
    return self.new_state(self.model.apply, params)

  def per_token(self, params, batch, rng=None):
    """Cross-entropy and correctness of every target, and the target weights
    (1 where a target counts; text windows weight all of theirs)."""
    tokens = batch['tokens']
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    train = rng is not None
    logits = self.model.apply({'params': params}, inputs, train=train,
                              rngs={'dropout': rng} if train else None)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    weights = batch.get('weights', jnp.ones(targets.shape, jnp.float32))
    return losses, correct, weights

  # -- Steps --------------------------------------------------------------------------

  def train_step(self, state, batch, rng):
    def sums(params, micro, key):
      losses, correct, weights = self.per_token(params, micro, key)
      return jnp.sum(losses * weights), (jnp.sum(weights), jnp.sum(correct * weights))

    grad_of_sums = jax.value_and_grad(sums, has_aux=True)
    k = self.config.optim.accumulation_steps
    if k == 1:
      (loss_sum, (count, correct)), grads = grad_of_sums(state.params, batch, rng)
    else:
      # Micro-batch i takes rows i, i + k, ...: every device keeps its rows.
      micro = jax.tree.map(lambda x: x.reshape((-1, k) + x.shape[1:]).swapaxes(0, 1), batch)

      def accumulate(total, i):
        one = jax.tree.map(lambda x: x[i], micro)
        (loss_sum, (count, correct)), grads = grad_of_sums(
            state.params, one, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, total, (loss_sum, count, correct, grads)), None

      zeros = (0.0, 0.0, 0.0, jax.tree.map(jnp.zeros_like, state.params))
      (loss_sum, count, correct, grads), _ = jax.lax.scan(accumulate, zeros, jnp.arange(k))
    # The gradient of the mean loss over every weighted target of the batch.
    grads = jax.tree.map(lambda g: g / count, grads)
    state = state.apply_gradients(grads=grads)
    return state, {'loss': loss_sum / count, 'accuracy': correct / count,
                   'grad_norm': optax.tree.norm(grads)}

  def eval_step(self, state, batch):
    losses, correct, weights = self.per_token(state.params, batch)
    weights = weights * batch['mask'][:, None]
    out = {'loss': jnp.sum(losses * weights), 'accuracy': jnp.sum(correct * weights),
           'count': jnp.sum(weights)}
    if self.config.data.name == 'arithmetic':
      # Solved: every answer digit right under teacher forcing, which is
      # greedy decoding getting the whole answer (see lm/arithmetic.py).
      solved = jnp.all((correct > 0) | (weights == 0), axis=1)
      out['exact_match'] = jnp.sum(solved * batch['mask'])
      out['count_exact_match'] = jnp.sum(batch['mask'])
    else:
      target_bytes = jnp.asarray(self.tokenizer.token_bytes())[batch['tokens'][:, 1:]]
      out['bits_per_byte'] = jnp.sum(losses * weights) / math.log(2)
      out['count_bits_per_byte'] = jnp.sum(target_bytes * weights)
    return out

  def derived_metrics(self, means: dict[str, float]) -> dict[str, float]:
    out = {}
    if 'eval/loss' in means:
      out['eval/perplexity'] = math.exp(min(means['eval/loss'], 700.0))
    return out

  # -- Speed and size -------------------------------------------------------------------

  def input_length(self) -> int:
    c = self.config
    if c.data.name == 'arithmetic':
      return arithmetic.sequence_length(c.data.digits) - 1
    return c.model.context

  def perf_spec(self) -> PerfSpec:
    k = self.config.optim.accumulation_steps  # micro-batches run in a lax.scan
    return PerfSpec(tokens_per_example=self.input_length(),
                    compute_dtype=models.compute_dtype(self.config.model),
                    loop_iterations=1 if k == 1 else k)

  def formula_flops_per_step(self) -> float:
    """6N + 12·L·d·T FLOPs per trained token (PaLM appendix B), times tokens."""
    m, length = self.config.model, self.input_length()
    per_token = 6 * model_lib.num_params(self.model) + 12 * m.num_layers * m.width * length
    return per_token * self.config.batch_size * length

  def describe(self, state, flops_per_step):
    m = self.config.model
    n = model_lib.count_params(state.params)
    plural = lambda count, word: f'{count} {word}' + ('' if count == 1 else 's')
    lines = [f'model: {plural(m.num_layers, "layer")}, {plural(m.num_heads, "head")}'
             + (f' ({m.num_kv_heads} key/value heads)' if m.num_kv_heads else '')
             + f', width {m.width}, context {m.context}, {m.positions} positions, '
             f'{m.dtype} compute; {n:,} parameters ({n / 1e6:.2f}M, without position '
             f'embeddings); vocabulary {self.tokenizer.vocab_size} ({self.config.data.tokenizer})']
    formula = self.formula_flops_per_step()
    if flops_per_step:
      lines.append(f'FLOPs per step: {flops_per_step:.3e} by XLA cost analysis, '
                   f'{formula:.3e} by 6N + 12LdT (ratio {flops_per_step / formula:.2f})')
    return lines

  # -- Generation -------------------------------------------------------------------

  def encode_prompt(self, prompt: str, where: str = 'prompt') -> np.ndarray:
    try:
      ids = self.tokenizer.encode(prompt)
    except tokenizers.UnknownCharacters as e:
      raise UsageError(where, str(e), 'use characters of the training text') from None
    check(len(ids) > 0, where, 'is empty', 'give at least one character')
    return ids

  def sample_texts(self, params, prompts: list[str], num_tokens: int, key,
                   temperature: float, top_k: int, top_p: float) -> list[str]:
    """One continuation per prompt, all decoded in one batch."""
    tokens, first = generate.pad_prompts([self.encode_prompt(p) for p in prompts],
                                         self.config.model.context)
    out = generate.generate(self.model, params, jnp.asarray(tokens), jnp.asarray(first),
                            num_tokens, key, temperature=temperature,
                            top_k=min(top_k, self.tokenizer.vocab_size), top_p=top_p)
    return [self.tokenizer.decode(row) for row in np.asarray(out)]

  def check_sample(self, request: SampleRequest) -> dict:
    """Each prompt (none: the config's) gets `num_samples` continuations."""
    r = request
    prompts = list(r.prompts) or [self.config.sample.prompt]
    check_sampling(r.num_tokens, r.temperature, r.top_k, r.top_p, r.num_samples)
    for prompt in prompts:
      self.encode_prompt(prompt)
    return {'name': 'lm', 'prompts': prompts, 'num_tokens': r.num_tokens,
            'temperature': r.temperature, 'top_k': r.top_k, 'top_p': r.top_p,
            'num_samples': r.num_samples, 'seed': r.seed}

  def sample(self, state, data, plan: dict, out: str) -> list[str]:
    """Prints the samples of every prompt, decoded as one batch, and writes
    them to `out`.txt."""
    p = plan
    prompts = [prompt for prompt in p['prompts'] for _ in range(p['num_samples'])]
    path = out + '.txt'
    print(self.write_samples(path, state.params, prompts, p['num_tokens'],
                             jax.random.key(p['seed']), p['temperature'], p['top_k'],
                             p['top_p']), end='')
    return [path]

  def write_samples(self, path: str, params, prompts: list[str], num_tokens: int, key,
                    temperature: float, top_k: int, top_p: float) -> str:
    """`sample_texts`, written to `path` under a header per sample; returns the text."""
    texts = self.sample_texts(params, prompts, num_tokens, key, temperature, top_k, top_p)
    text = format_samples(prompts, texts)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
      f.write(text)
    return text

  def figures(self, state, data, history, fig_dir):
    c = self.config
    paths = [plots.loss_curve(history, f'{c.data.name}: next-token loss',
                              f'{fig_dir}/lm_loss.png', ylabel='cross-entropy (nats/token)',
                              eval_label='validation (whole split)', yscale='linear')]
    if c.data.name == 'arithmetic':
      text = self.arithmetic_examples(state, data)
      with open(os.path.join(fig_dir, 'examples.txt'), 'w') as f:
        f.write(text)
    else:
      s = c.sample
      key = jax.random.fold_in(jax.random.key(c.seed), streams.SAMPLE)
      text = self.write_samples(os.path.join(fig_dir, 'samples.txt'), state.params,
                                [s.prompt] * s.num_samples, s.num_tokens, key,
                                s.temperature, s.top_k, s.top_p)
    if not c.quiet:
      print(text, end='')
    return paths

  @staticmethod
  def sweep_figures(runs: dict[str, dict], fig_dir: str) -> list[str]:
    """The emergence curve of a sweep over model sizes: held-out exact match
    (arithmetic) or validation loss (text) against parameters and FLOPs."""
    points = []
    for run in runs.values():
      workload = trained_workload(run['workdir'])
      config, summary = workload.config, run['summary']
      flops = summary.get('flops_per_step') or workload.formula_flops_per_step()
      metric = 'eval/exact_match' if config.data.name == 'arithmetic' else 'eval/loss'
      label = f'{config.model.num_layers}L x {config.model.width}'
      points.append({'params': model_lib.num_params(workload.model), 'label': label,
                     'flops': flops * config.num_steps, 'final': summary['final'][metric],
                     'history': run['history']})
    return [plots.emergence(points, os.path.join(fig_dir, 'emergence.png'), metric)]

  def arithmetic_examples(self, state, data, count: int = 10) -> str:
    """Greedy answers to the first test problems, marked right or wrong."""
    c = self.config
    n = c.data.digits
    problems = [self.tokenizer.decode(row) for row in data['test']['tokens'][:count]]
    prompts = [p[:-arithmetic.answer_length(n)] for p in problems]
    answers = self.sample_texts(state.params, prompts, arithmetic.answer_length(n),
                                jax.random.key(0), 0.0, 0, 1.0)
    lines = [f'{p}{a}  {"right" if p + a == q else "wrong, " + q}'
             for p, a, q in zip(prompts, answers, problems)]
    return (f'greedy answers to held-out {n}-digit problems '
            f'(answers {"reversed" if c.data.reverse_answer else "as written"}):\n'
            + '\n'.join(lines) + '\n')


def trained_workload(workdir: str) -> LanguageModel:
  """The workload of a run in `workdir`, with its tokenizer."""
  workload = LanguageModel(config_lib.load_run_config(workdir))
  workload.load_artifacts(workdir)
  return workload


def parameter_count(workdir: str) -> int:
  """Parameters of the run's model, without position embeddings."""
  return model_lib.num_params(trained_workload(workdir).model)


def check_sampling(num_tokens: int, temperature: float, top_k: int, top_p: float,
                   num_samples: int, where: str = '') -> None:
  check(num_tokens > 0, f'{where}num_tokens', f'{num_tokens} is not allowed',
        'give a whole number > 0')
  check(temperature >= 0, f'{where}temperature', f'{temperature} is not allowed',
        'give 0 (greedy) or more')
  check(top_k >= 0, f'{where}top_k', f'{top_k} is not allowed', 'give 0 (off) or more')
  check(0 < top_p <= 1, f'{where}top_p', f'{top_p} is not allowed',
        'give a probability in (0, 1]; 1 is off')
  check(num_samples > 0, f'{where}num_samples', f'{num_samples} is not allowed',
        'give a whole number > 0')


def read_text(path: str, name: str, data_dir: str) -> dict[str, str]:
  """{'train', 'validation'} text: the file at `path` if given (first 90 % /
  last 10 % of its characters), else the data set `name`."""
  if not path:
    return registry.load(name, data_dir)
  check(os.path.isfile(path), 'config.data.path', f'{path} does not exist',
        'give a UTF-8 text file')
  text = files.read_text(path)  # a UsageError unless non-empty UTF-8
  check(len(text) >= 100, 'config.data.path', f'{path} has only {len(text)} characters',
        'give a text of at least 100 characters')
  return registry.split_text(text)


def format_samples(prompts: list[str], texts: list[str]) -> str:
  """Each prompt followed by its continuation, under a numbered header."""
  return ''.join(f'--- sample {i + 1} of {len(texts)} (prompt {prompt!r}) ---\n{prompt}{text}\n'
                 for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)))
