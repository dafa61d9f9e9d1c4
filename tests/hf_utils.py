"""Tiny random Hugging Face checkpoints made by the tests themselves (no downloads)."""

from __future__ import annotations

import torch
import transformers


def make_hf_model(
    model_type: str = "qwen2",
    *,
    vocab_size: int = 96,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    tie: bool = False,
    attention_bias: bool = False,
    head_dim: int | None = None,
    sliding_window: int | None = None,
    rope_parameters: dict | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
  """A randomly initialised transformers model with *every* weight random (norms and biases too).

  `head_dim` defaults to hidden_size / num_heads; `sliding_window` is Mistral's (None: full
  attention).
  """
  common = dict(
      vocab_size=vocab_size,
      hidden_size=hidden_size,
      num_hidden_layers=num_layers,
      num_attention_heads=num_heads,
      num_key_value_heads=num_kv_heads,
      intermediate_size=intermediate_size,
      max_position_embeddings=256,
      tie_word_embeddings=tie,
      bos_token_id=1,
      eos_token_id=2,
      pad_token_id=0,
      head_dim=head_dim or hidden_size // num_heads,
  )
  if rope_parameters is not None:
    common["rope_parameters"] = rope_parameters
  classes = {  # model_type -> (config class, model class, the family's own config fields)
      "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
      "llama": (
          transformers.LlamaConfig,
          transformers.LlamaForCausalLM,
          {"attention_bias": attention_bias},
      ),
      "qwen3": (
          transformers.Qwen3Config,
          transformers.Qwen3ForCausalLM,
          {"attention_bias": attention_bias},
      ),
      "mistral": (
          transformers.MistralConfig,
          transformers.MistralForCausalLM,
          {"sliding_window": sliding_window},
      ),
  }
  if model_type not in classes:
    raise ValueError(model_type)
  config_class, model_class, own = classes[model_type]
  model = model_class(config_class(**common, **own))
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 0.1 if "norm" in name or "bias" in name else 0.08
      offset = 1.0 if "norm" in name else 0.0
      p.copy_(offset + scale * torch.randn(p.shape, generator=gen))
  return model.to(dtype).eval()


def save_hf_model(model, path: str, max_shard_size: str | None = None) -> str:
  kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(path, **kwargs)
  return path
