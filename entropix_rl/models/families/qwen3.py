"""Qwen3 dense (`Qwen3ForCausalLM`): Llama plus an RMSNorm over Dh on every query and key head
(`self_attn.q_norm`, `self_attn.k_norm`, weights `[Dh]`), applied after the projections and
before RoPE, with the model's `rms_norm_eps`.

`head_dim` is explicit in config.json (it need not be D / H). `attention_bias: true` (biases
on q, k, v and o_proj) and sliding-window layers (`use_sliding_window: true`) are rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jax.sharding import PartitionSpec as P

from entropix_rl.models.architecture import Architecture
from entropix_rl.models.families.base import Family, reject_o_proj_bias
from entropix_rl.models.families.qwen2 import reject_sliding_layers
from entropix_rl.models.hf_layout import Tensor


def _flags_from_hf(raw: Mapping[str, Any]) -> dict[str, Any]:
  reject_o_proj_bias(raw, "qwen3")
  reject_sliding_layers(raw, "qwen3")
  return {}


def _qk_norm_tensors(config: Architecture) -> dict[str, Tensor]:
  return {
      "self_attn.q_norm.weight": Tensor("q_norm", (config.head_dim,)),
      "self_attn.k_norm.weight": Tensor("k_norm", (config.head_dim,)),
  }


FAMILY = Family(
    model_type="qwen3",
    hf_architecture="Qwen3ForCausalLM",
    fixed_flags={"qkv_bias": False, "qk_norm": True, "sliding_window": None},
    flags_from_hf=_flags_from_hf,
    hf_fields=lambda config: {
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
    },
    added_layer_tensors=_qk_norm_tensors,
    partition_rules={"q_norm": P(), "k_norm": P()},  # [L, Dh], replicated like the other norms
)
