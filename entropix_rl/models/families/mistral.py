"""Mistral (`MistralForCausalLM`): Llama plus sliding-window attention where the checkpoint
sets `sliding_window` (an int W: query t sees keys s with t - W < s <= t; null: full attention).

`head_dim` may be explicit in config.json. A config.json without `sliding_window` gets
transformers' default window, 4096.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from entropix_rl.models.families.base import CheckpointError, Family

HF_DEFAULT_WINDOW = 4096  # `MistralConfig.sliding_window` when config.json has none


def _flags_from_hf(raw: Mapping[str, Any]) -> dict[str, Any]:
  window = raw.get("sliding_window", HF_DEFAULT_WINDOW)
  if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
    raise CheckpointError(
        f"config.json has sliding_window={window!r}; allowed: a positive int "
        "or null (full attention)"
    )
  return {"sliding_window": window}


FAMILY = Family(
    model_type="mistral",
    hf_architecture="MistralForCausalLM",
    fixed_flags={"qkv_bias": False, "qk_norm": False},
    default_flags={"sliding_window": None},
    flags_from_hf=_flags_from_hf,
    hf_fields=lambda config: {"sliding_window": config.sliding_window},
)
