"""Static configuration of the decoder: sizes, decoder flags, dtypes, attention kernel."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from entropix_rl.models import families
from entropix_rl.models.architecture import SIZE_FIELDS, Architecture, RopeScaling
from entropix_rl.models.attention import ATTENTION_IMPLS

__all__ = [  # RopeScaling: ModelConfig's inherited annotations name it
    "SUPPORTED_DTYPES",
    "SUPPORTED_ROPE_TYPES",
    "ModelConfig",
    "RopeScaling",
    "rope_inverse_frequencies",
    "tiny_config",
]

SUPPORTED_DTYPES = ("float32", "bfloat16")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Architecture):
  """The decoder's config: its `Architecture` and how to run it; frozen and hashable so jitted
  functions take it as static.

  The decoder flags `qkv_bias`, `qk_norm` and `sliding_window` switch the generic decoder's
  features; left None, each takes its value from the model family (`models.families`), and a
  value the family's checkpoints cannot hold is a ValueError.

  Attributes:
    param_dtype: storage dtype of the params ("float32" or "bfloat16").
    compute_dtype: dtype of activations and matmul inputs; softmax and norms run in float32.
    attention_impl: `models.attention.ATTENTION_IMPLS`: "auto" (splash on TPU, cuDNN on GPU,
      dense on CPU), "dense", "blockwise" (flash-style, pure JAX), "splash" or "cudnn".
    attention_block_q, attention_block_k: query/key tile sizes of "blockwise" and "splash".
    (The architecture's fields: `Architecture`.)
  """

  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  attention_impl: str = "auto"
  attention_block_q: int = 512
  attention_block_k: int = 512

  def __post_init__(self):
    flags = families.get(self.model_type).resolve_flags(
        {flag: getattr(self, flag) for flag in families.FLAGS}
    )
    for flag, value in flags.items():
      object.__setattr__(self, flag, value)
    window = self.sliding_window
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
      raise ValueError(
          f"model.sliding_window={window!r}; allowed: an int >= 1 or None (full " "attention)"
      )
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"model.attention_impl={self.attention_impl!r}; allowed: {ATTENTION_IMPLS}")
    for name in ("attention_block_q", "attention_block_k"):
      if getattr(self, name) < 1:
        raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1")
    for name in ("param_dtype", "compute_dtype"):
      if getattr(self, name) not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}={getattr(self, name)!r}; allowed: {SUPPORTED_DTYPES}")
    for name in SIZE_FIELDS:
      if getattr(self, name) <= 0:
        raise ValueError(f"{name}={getattr(self, name)} must be positive")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of " f"num_kv_heads={self.num_kv_heads}"
      )
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
    if self.rope_scaling is not None and self.rope_scaling.rope_type not in SUPPORTED_ROPE_TYPES:
      raise ValueError(
          f"rope_scaling.rope_type={self.rope_scaling.rope_type!r}; "
          f"supported: {SUPPORTED_ROPE_TYPES}"
      )

  @property
  def param_jnp_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def compute_jnp_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.compute_dtype)

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  @property
  def family(self) -> families.Family:
    """The model family of `model_type` (`models.families`)."""
    return families.get(self.model_type)

  def num_params(self, include_embeddings: bool = True) -> int:
    """Parameter count (the family's). Non-embedding excludes the embedding and the untied
    lm_head."""
    return self.family.num_params(self, include_embeddings)

  def kv_cache_bytes_per_token(self) -> int:
    """Bytes of KV cache one token of one sequence takes: 2 · L · K · Dh · itemsize."""
    return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.compute_jnp_dtype.itemsize

  def flops_per_token(self) -> float:
    """Approximate forward matmul FLOPs per token (2 · non-embedding params + unembedding)."""
    return 2.0 * (self.num_params(include_embeddings=False) + self.vocab_size * self.hidden_size)


def tiny_config(**overrides) -> ModelConfig:
  """A tiny random-init config for tests and the CPU quickstart."""
  base = dict(
      vocab_size=64,
      hidden_size=32,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      intermediate_size=64,
      max_position_embeddings=256,
  )
  base.update(overrides)
  return ModelConfig(**base)


def rope_inverse_frequencies(config: ModelConfig) -> jnp.ndarray:
  """`[Dh/2]` float32 inverse frequencies, with the config's scaling applied."""
  dh = config.head_dim
  inv = 1.0 / (config.rope_theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
  scaling = config.rope_scaling
  if scaling is None or scaling.rope_type == "default":
    return inv
  if scaling.rope_type == "linear":
    return inv / scaling.factor
  low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
  high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv
  scaled = jnp.where(wavelen > low_wavelen, inv / scaling.factor, inv)
  smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
      scaling.high_freq_factor - scaling.low_freq_factor
  )
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_medium, smoothed, scaled)
