"""The decoder's architecture: what a checkpoint's `config.json` holds (`Architecture`), and
its RoPE scaling. `ModelConfig` (`models.config`) adds how to run it; the model families
(`models.families`) read only these fields."""

from __future__ import annotations

import dataclasses

SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
)
"""The `Architecture` fields that size the decoder; each must be positive."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling (Hugging Face `rope_scaling` / `rope_parameters`).

  `rope_type` "linear" divides every inverse frequency by `factor`; "llama3" applies
  Llama-3.1's wavelength-dependent interpolation with the other fields.
  """

  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What the decoder computes: the fields a checkpoint's config.json holds (`ModelConfig`
  adds how to run it). Model families (`models.families`) read these fields.

  Attributes:
    vocab_size: V, rows of the embedding.
    hidden_size: D.
    num_layers: L.
    num_heads: H, query heads.
    num_kv_heads: K, key/value heads (H % K == 0; K < H is grouped-query attention).
    head_dim: Dh.
    intermediate_size: F, SwiGLU hidden size.
    model_type: the model family, a key of `models.families` ("qwen2", "llama", "qwen3",
      "mistral"): the decoder flags' defaults, the Hugging Face conversion and the partition
      rules of its params.
    rope_theta: RoPE base.
    rope_scaling: optional frequency scaling.
    rms_norm_eps: RMSNorm epsilon.
    qkv_bias: whether q/k/v projections have a bias (Qwen2: yes, Llama, Qwen3, Mistral: no).
    qk_norm: whether an RMSNorm over Dh normalises each query and key head before RoPE
      (Qwen3: yes).
    sliding_window: W, query t attends to keys s with t - W < s <= t; None: every earlier key
      (Mistral checkpoints choose).
    tie_embeddings: whether the unembedding is the transposed embedding.
    max_position_embeddings: context length the model was trained for.
    bos_token_id, eos_token_id: carried through to the saved `config.json`.
  """

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  model_type: str = "qwen2"
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-6
  qkv_bias: bool | None = None
  qk_norm: bool | None = None
  sliding_window: int | None = None
  tie_embeddings: bool = False
  max_position_embeddings: int = 32768
  bos_token_id: int | None = None
  eos_token_id: int | None = None
