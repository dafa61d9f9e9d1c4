"""The registry of model families, by Hugging Face `model_type`.

A family (`base.Family`) is one module here: the decoder flags its checkpoints set, its
`config.json` and tensor conversion, its partition rules and so its param count.
`ModelConfig`, `models.hf` and `sharding` reach a family only through `get`. Adding one:
docs/design.md, "Model families".
"""

from __future__ import annotations

from jax.sharding import PartitionSpec as P

from entropix_rl.models.families import llama, mistral, qwen2, qwen3
from entropix_rl.models.families.base import COMMON_RULES, FLAGS, CheckpointError, Family

__all__ = ["FLAGS", "MODEL_TYPES", "PARTITION_RULES", "CheckpointError", "Family", "get"]

_FAMILIES = {
    family.model_type: family
    for family in (qwen2.FAMILY, llama.FAMILY, qwen3.FAMILY, mistral.FAMILY)
}
MODEL_TYPES = tuple(_FAMILIES)


def get(model_type: str) -> Family:
  """The family of `model_type`.

  Raises:
    ValueError: naming `model_type` and the supported values.
  """
  family = _FAMILIES.get(model_type)
  if family is None:
    raise ValueError(f"model_type={model_type!r}; supported: {MODEL_TYPES}")
  return family


def _partition_rules() -> dict[str, P]:
  """`COMMON_RULES` and every family's rules; a param name with two rules is an error."""
  rules = dict(COMMON_RULES)
  for family in _FAMILIES.values():
    for name, spec in family.partition_rules.items():
      if rules.setdefault(name, spec) != spec:
        raise ValueError(
            f"family {family.model_type!r} gives param {name!r} the rule {spec}; "
            f"it already has {rules[name]}"
        )
  return rules


PARTITION_RULES = _partition_rules()
