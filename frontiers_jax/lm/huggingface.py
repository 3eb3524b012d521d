"""The language model as a Hugging Face GPT-2 (`transformers.GPT2LMHeadModel`).

The project's `Transformer` with learned positions is GPT-2's architecture:
pre-LayerNorm blocks, learned position table, exact GELU, a head tied to the
token embedding, attention scaled by 1 / sqrt(head size). Its parameters map
one to one, without any transpose (GPT-2's Conv1D weights are [in, out], as
flax kernels are):

  token_embedding/embedding               transformer.wte.weight
  position_embedding                      transformer.wpe.weight
  block_i/ln_attention/{scale,bias}       transformer.h.i.ln_1.{weight,bias}
  block_i/attention/{query,key,value}     transformer.h.i.attn.c_attn (concatenated)
  block_i/attention/out                   transformer.h.i.attn.c_proj
  block_i/ln_mlp                          transformer.h.i.ln_2
  block_i/fc, block_i/proj                transformer.h.i.mlp.c_fc, .mlp.c_proj
  ln_final                                transformer.ln_f

GPT-2 has a bias in every layer; a model trained without biases gets zeros.
Rotary positions and grouped-query attention have no GPT-2 form.
"""

import json
import os

import numpy as np

from frontiers_jax import params_io
from frontiers_jax.errors import check
from frontiers_jax.lm import model as model_lib

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'


def check_exportable(model: model_lib.Transformer) -> None:
  check(model.positions == 'learned', 'format', f'GPT-2 has learned positions, this model '
        f'{model.positions} ones', 'export --format=safetensors, or train with '
        '--config.model.positions=learned')
  check(model_lib.kv_heads(model) == model.num_heads, 'format',
        f'GPT-2 has one key/value head per query head, this model {model_lib.kv_heads(model)} '
        f'for {model.num_heads}', 'export --format=safetensors')


def gpt2_config(model: model_lib.Transformer) -> dict:
  """The `GPT2Config` of `model` (no dropout: an exported model is for inference)."""
  return {
      'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
      'vocab_size': model.vocab_size, 'n_positions': model.context, 'n_embd': model.width,
      'n_layer': model.num_layers, 'n_head': model.num_heads,
      'n_inner': model.mlp_ratio * model.width, 'activation_function': 'gelu',
      'resid_pdrop': 0.0, 'embd_pdrop': 0.0, 'attn_pdrop': 0.0, 'layer_norm_epsilon': 1e-5,
      'initializer_range': 0.02, 'scale_attn_weights': True, 'tie_word_embeddings': True,
      'bos_token_id': None, 'eos_token_id': None, 'pad_token_id': None,
      'torch_dtype': 'float32', 'use_cache': True,
  }


def gpt2_tensors(model: model_lib.Transformer, params) -> dict[str, np.ndarray]:
  """GPT-2's state dict (without the tied head) of the flax `params`, float32."""
  f32 = lambda x: np.asarray(x, np.float32)
  width = model.width

  def with_bias(module: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    return f32(module['kernel']), f32(module.get('bias', np.zeros(size)))

  def norm(module: dict) -> tuple[np.ndarray, np.ndarray]:
    return f32(module['scale']), f32(module.get('bias', np.zeros(width)))

  out = {'transformer.wte.weight': f32(params['token_embedding']['embedding']),
         'transformer.wpe.weight': f32(params['position_embedding'])}
  for i in range(model.num_layers):
    block, h = params[f'block_{i}'], f'transformer.h.{i}'
    attention = block['attention']
    qkv = [with_bias(attention[name], width) for name in ('query', 'key', 'value')]
    out[f'{h}.attn.c_attn.weight'] = np.concatenate([w for w, _ in qkv], axis=1)
    out[f'{h}.attn.c_attn.bias'] = np.concatenate([b for _, b in qkv])
    for ours, theirs, size in (('fc', 'mlp.c_fc', model.mlp_ratio * width),
                               ('proj', 'mlp.c_proj', width)):
      out[f'{h}.{theirs}.weight'], out[f'{h}.{theirs}.bias'] = with_bias(block[ours], size)
    out[f'{h}.attn.c_proj.weight'], out[f'{h}.attn.c_proj.bias'] = with_bias(
        attention['out'], width)
    for ours, theirs in (('ln_attention', 'ln_1'), ('ln_mlp', 'ln_2')):
      out[f'{h}.{theirs}.weight'], out[f'{h}.{theirs}.bias'] = norm(block[ours])
  out['transformer.ln_f.weight'], out['transformer.ln_f.bias'] = norm(params['ln_final'])
  return out


def write_gpt2(folder: str, model: model_lib.Transformer, params,
               metadata: dict[str, str]) -> list[str]:
  """`config.json` and `model.safetensors` in `folder`: what
  `GPT2LMHeadModel.from_pretrained(folder)` reads."""
  check_exportable(model)
  os.makedirs(folder, exist_ok=True)
  config_path = os.path.join(folder, CONFIG_FILE)
  with open(config_path, 'w') as f:
    json.dump(gpt2_config(model), f, indent=2)
  # transformers reads a safetensors file only with format 'pt' in its metadata.
  weights = params_io.write_safetensors(os.path.join(folder, WEIGHTS_FILE),
                                        gpt2_tensors(model, params), {**metadata, 'format': 'pt'})
  return [config_path, weights]
