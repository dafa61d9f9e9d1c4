"""Llama (`LlamaForCausalLM`): the decoder with every flag off.

`attention_bias: true` (biases on q, k, v and o_proj) is rejected: the decoder has no o_proj
bias.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from entropix_rl.models.families.base import Family, reject_o_proj_bias


def _flags_from_hf(raw: Mapping[str, Any]) -> dict[str, Any]:
  reject_o_proj_bias(raw, "llama")
  return {}


FAMILY = Family(
    model_type="llama",
    hf_architecture="LlamaForCausalLM",
    fixed_flags={"qkv_bias": False, "qk_norm": False, "sliding_window": None},
    flags_from_hf=_flags_from_hf,
    hf_fields=lambda config: {"attention_bias": False, "mlp_bias": False},
)
