"""Qwen2 (`Qwen2ForCausalLM`, also Qwen2.5): Llama plus biases on the q, k and v projections.

Qwen2 configs can switch the layers from `max_window_layers` up to sliding-window attention
(`use_sliding_window: true`); the decoder uses one attention pattern for every layer, so such
checkpoints are rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jax.sharding import PartitionSpec as P

from entropix_rl.models.architecture import Architecture
from entropix_rl.models.families.base import CheckpointError, Family
from entropix_rl.models.hf_layout import Layout, Tensor


def reject_sliding_layers(raw: Mapping[str, Any], model_type: str) -> None:
  """Raises CheckpointError if a Qwen-style `config.json` makes some layers sliding-window."""
  if raw.get("use_sliding_window"):
    raise CheckpointError(
        f"config.json sets use_sliding_window=true (sliding-window attention "
        f"on some layers); {model_type} is supported with full attention only"
    )


def _flags_from_hf(raw: Mapping[str, Any]) -> dict[str, Any]:
  reject_sliding_layers(raw, "qwen2")
  return {}


def _bias_tensors(config: Architecture) -> dict[str, Tensor]:
  h, k, dh = config.num_heads, config.num_kv_heads, config.head_dim
  return {
      "self_attn.q_proj.bias": Tensor("q_bias", (h * dh,), Layout.PER_HEAD),
      "self_attn.k_proj.bias": Tensor("k_bias", (k * dh,), Layout.PER_HEAD),
      "self_attn.v_proj.bias": Tensor("v_bias", (k * dh,), Layout.PER_HEAD),
  }


FAMILY = Family(
    model_type="qwen2",
    hf_architecture="Qwen2ForCausalLM",
    fixed_flags={"qkv_bias": True, "qk_norm": False, "sliding_window": None},
    flags_from_hf=_flags_from_hf,
    hf_fields=lambda config: {"use_sliding_window": False, "sliding_window": None},
    added_layer_tensors=_bias_tensors,
    partition_rules={  # [L, heads, Dh]: heads over tensor, like the projections
        "q_bias": P(None, "tensor", None),
        "k_bias": P(None, "tensor", None),
        "v_bias": P(None, "tensor", None),
    },
)
