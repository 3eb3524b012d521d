"""Language models: a GPT trained by next-token prediction (workload `lm`).

Variants:
  shakespeare_char_cpu  4 layers x 4 heads x width 128, context 64, batch 12,
                        2000 steps: the CPU configuration of nanoGPT's
                        Shakespeare example (published validation loss 1.88),
                        with rotary positions; --config.model.positions=learned
                        is nanoGPT's model exactly (see the README's Results)
  shakespeare_char      6 x 6 x 384, context 256, batch 64, dropout 0.2, 5000
                        steps: its GPU configuration (published 1.4697), with
                        nanoGPT's learned positions
  shakespeare_bpe       the CPU model on byte-level BPE tokens (vocabulary 512)
  arithmetic            3-digit addition, one model (the emergence sweep is
                        configs/emergence.py)
  tiny                  a seconds-long run for tests (arithmetic, 1 digit)

Any UTF-8 file instead of Shakespeare: --config.data.path=FILE.
"""

import ml_collections

from frontiers_jax import config as config_lib

# The first is the default.
VARIANTS = {
    'shakespeare_char_cpu': "nanoGPT's CPU Shakespeare model (4x4x128), rotary positions",
    'shakespeare_char': "nanoGPT's GPU Shakespeare model (6x6x384, 5000 steps)",
    'shakespeare_bpe': 'the CPU model on byte-level BPE tokens (vocabulary 512)',
    'arithmetic': '3-digit addition, one model',
    'tiny': 'a seconds-long run for tests (1-digit addition)',
}


def model_config(num_layers: int, num_heads: int, width: int, context: int,
                 dropout: float = 0.0) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.num_layers = num_layers
  m.num_heads = num_heads
  m.num_kv_heads = 0          # 0: one key/value head per query head
  m.width = width
  m.context = context         # the longest sequence the model sees
  m.mlp_ratio = 4
  m.positions = 'learned'     # or 'rotary'
  m.dropout = dropout
  m.use_bias = False
  m.dtype = 'float32'         # compute dtype; 'bfloat16' keeps float32 parameters
  m.attention_impl = 'xla'    # training attention: 'xla', or 'cudnn' (flash, GPU, bf16)
  return m


def base_lm_config() -> ml_collections.ConfigDict:
  """The shared keys, with nanoGPT's Shakespeare optimizer: AdamW (0.9, 0.99),
  weight decay 0.1, learning rate 1e-3 warmed up over 100 steps and decayed on
  a cosine to 1e-4, gradients clipped at global norm 1."""
  c = config_lib.base_config()
  c.workload = 'lm'
  c.seed = 1337
  c.data.name = 'tiny_shakespeare'
  c.data.path = ''            # any UTF-8 text file instead of data.name
  c.data.tokenizer = 'char'   # char, byte or bpe
  c.data.vocab_size = 512     # bpe only
  c.data.digits = 3           # arithmetic: digits per operand
  c.data.num_train = 100_000  # arithmetic: distinct training problems
  c.data.num_test = 2_000     # arithmetic: held-out problems
  c.data.reverse_answer = True  # arithmetic: the sum written last digit first
  c.model = model_config(4, 4, 128, 64)
  c.optim.name = 'adamw'
  c.optim.learning_rate = 1e-3
  c.optim.final_learning_rate = 1e-4
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_steps = 100
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.1
  c.optim.clip_norm = 1.0
  c.optim.accumulation_steps = 1  # micro-batches per step (same update, less memory)
  c.eval_batch_size = 256
  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = '\n'      # the samples written when training ends
  c.sample.num_tokens = 500
  c.sample.temperature = 0.8
  c.sample.top_k = 200
  c.sample.top_p = 1.0
  c.sample.num_samples = 2
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = config_lib.variant(arg, VARIANTS)
  c = base_lm_config()
  if name in ('shakespeare_char_cpu', 'shakespeare_bpe'):
    c.batch_size = 12
    c.num_steps = 2000
    c.log_every = 100
    c.eval_every = 500
    # Whole-split validation loss over seeds 0-7: 1.775-1.797 (mean 1.785)
    # with rotary positions, 1.892-1.911 (mean 1.903) with a learned table.
    c.model.positions = 'rotary'
    if name == 'shakespeare_bpe':
      c.data.tokenizer = 'bpe'
  elif name == 'shakespeare_char':
    c.model = model_config(6, 6, 384, 256, dropout=0.2)
    c.batch_size = 64
    c.num_steps = 5000
    c.log_every = 250
    c.eval_every = 1000
    c.checkpoint_every = 1000
  elif name == 'arithmetic':
    arithmetic_setup(c)
  else:  # tiny
    arithmetic_setup(c)
    config_lib.set_tiny_schedule(c, batch_size=16, eval_batch_size=64)
    c.data.digits = 1
    c.data.num_train = 60
    c.data.num_test = 30
    c.model = model_config(1, 2, 16, 5)
    c.optim.warmup_steps = 2
    c.sample.num_tokens = 8
  return c


def arithmetic_setup(c: ml_collections.ConfigDict) -> None:
  """3-digit addition with a 4-layer model of width 128."""
  c.data.name = 'arithmetic'
  c.model = model_config(4, 4, 128, 11)
  c.batch_size = 256
  c.num_steps = 2000
  c.log_every = 100
  c.eval_every = 500
  c.eval_batch_size = 1000
  c.optim.warmup_steps = 100
  c.sample.prompt = '123+456='
  c.sample.num_tokens = 4
  c.sample.num_samples = 1
