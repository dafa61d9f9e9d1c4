"""The `Family` record each family module fills in, and what every family shares.

The decoder (`models/decoder.py`) is one generic function of `ModelConfig`; its architecture
switches are the decoder flags `FLAGS`:

* `qkv_bias`: biases on the q, k, v projections (params `q_bias`, `k_bias`, `v_bias`);
* `qk_norm`: an RMSNorm over Dh of every query and key head before RoPE (`q_norm`, `k_norm`);
* `sliding_window`: query t sees only keys s with t - window < s (None: every earlier key).

A family is one Hugging Face architecture on that decoder: which flags its checkpoints set,
how its `config.json` and tensors map onto `ModelConfig` and our params, and the partition
rules of the params it adds. Shared here: the tensors every family has
(`common_layer_tensors`, `top_tensors`) and their partition rules (`COMMON_RULES`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import math
from typing import Any

from jax.sharding import PartitionSpec as P

from entropix_rl.models.architecture import Architecture
from entropix_rl.models.hf_layout import Layout, Tensor

FLAGS = ("qkv_bias", "qk_norm", "sliding_window")
EMBEDDINGS = ("embed", "lm_head")

# Mesh axes (`sharding.AXES`): fsdp shards the hidden axis D, tensor the heads, the MLP hidden
# units and the vocabulary. Stacked layer params lead with the unsharded [L] axis.
COMMON_RULES: dict[str, P] = {
    "embed": P("tensor", "fsdp"),  # [V, D]
    "lm_head": P("fsdp", "tensor"),  # [D, V]
    "final_norm": P(),  # [D]
    "attn_norm": P(),  # [L, D]
    "mlp_norm": P(),  # [L, D]
    "q": P(None, "fsdp", "tensor", None),  # [L, D, H, Dh]
    "k": P(None, "fsdp", "tensor", None),  # [L, D, K, Dh]
    "v": P(None, "fsdp", "tensor", None),  # [L, D, K, Dh]
    "o": P(None, "tensor", None, "fsdp"),  # [L, H, Dh, D]
    "gate": P(None, "fsdp", "tensor"),  # [L, D, F]
    "up": P(None, "fsdp", "tensor"),  # [L, D, F]
    "down": P(None, "tensor", "fsdp"),  # [L, F, D]
}


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be read as a supported model."""


def top_tensors(config: Architecture) -> dict[str, Tensor]:
  """Hugging Face name -> tensor, for the params outside the layers."""
  v, d = config.vocab_size, config.hidden_size
  table = {
      "model.embed_tokens.weight": Tensor("embed", (v, d)),
      "model.norm.weight": Tensor("final_norm", (d,)),
  }
  if not config.tie_embeddings:
    table["lm_head.weight"] = Tensor("lm_head", (v, d), Layout.TRANSPOSED)
  return table


def common_layer_tensors(config: Architecture) -> dict[str, Tensor]:
  """Suffix after `model.layers.{i}.` -> tensor, for the layer params of every family."""
  d, h, k, dh, f = (
      config.hidden_size,
      config.num_heads,
      config.num_kv_heads,
      config.head_dim,
      config.intermediate_size,
  )
  return {
      "input_layernorm.weight": Tensor("attn_norm", (d,)),
      "post_attention_layernorm.weight": Tensor("mlp_norm", (d,)),
      "self_attn.q_proj.weight": Tensor("q", (h * dh, d), Layout.HEADS_IN),
      "self_attn.k_proj.weight": Tensor("k", (k * dh, d), Layout.HEADS_IN),
      "self_attn.v_proj.weight": Tensor("v", (k * dh, d), Layout.HEADS_IN),
      "self_attn.o_proj.weight": Tensor("o", (d, h * dh), Layout.HEADS_OUT),
      "mlp.gate_proj.weight": Tensor("gate", (f, d), Layout.TRANSPOSED),
      "mlp.up_proj.weight": Tensor("up", (f, d), Layout.TRANSPOSED),
      "mlp.down_proj.weight": Tensor("down", (d, f), Layout.TRANSPOSED),
  }


def reject_o_proj_bias(raw: Mapping[str, Any], model_type: str) -> None:
  """Raises CheckpointError if `attention_bias` is set: in Llama-style checkpoints it puts a
  bias on o_proj too, which the decoder does not have."""
  if raw.get("attention_bias"):
    raise CheckpointError(
        f"config.json sets attention_bias=true: a {model_type} checkpoint then "
        "has an o_proj bias, which is not supported"
    )


def _none(_: Any) -> dict[str, Any]:
  return {}


@dataclasses.dataclass(frozen=True)
class Family:
  """One Hugging Face model family on the generic decoder.

  Attributes:
    model_type: `config.json`'s `model_type`, the family's key in the registry.
    hf_architecture: `config.json`'s `architectures[0]`, the transformers model class.
    fixed_flags: decoder flags every checkpoint of the family has, flag -> value.
    default_flags: decoder flags a checkpoint chooses, flag -> value when a config leaves it
      None. With `fixed_flags` they cover `FLAGS`, each flag once.
    flags_from_hf: `config.json` dict -> the chosen flags it sets; raises CheckpointError for
      a variant of the family the decoder does not implement.
    hf_fields: config -> the family's own `config.json` fields (written by `hf.save`).
    added_layer_tensors: config -> the layer tensors the family adds to
      `common_layer_tensors` (suffix after `model.layers.{i}.` -> tensor).
    partition_rules: param name -> PartitionSpec, for the params it adds.
  """

  model_type: str
  hf_architecture: str
  fixed_flags: Mapping[str, Any]
  default_flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  flags_from_hf: Callable[[Mapping[str, Any]], dict[str, Any]] = _none
  hf_fields: Callable[[Architecture], dict[str, Any]] = _none
  added_layer_tensors: Callable[[Architecture], dict[str, Tensor]] = _none
  partition_rules: Mapping[str, P] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    fixed, chosen = set(self.fixed_flags), set(self.default_flags)
    if fixed & chosen or fixed | chosen != set(FLAGS):
      raise ValueError(
          f"family {self.model_type!r}: fixed_flags {sorted(fixed)} and "
          f"default_flags {sorted(chosen)} must split the decoder flags {FLAGS}"
      )

  def resolve_flags(self, values: Mapping[str, Any]) -> dict[str, Any]:
    """Every decoder flag's value for a config that sets `values` (None: unset).

    Raises:
      ValueError: naming the flag, for a fixed flag set to another value.
    """
    resolved = {}
    for flag in FLAGS:
      value = values.get(flag)
      if flag in self.fixed_flags:
        fixed = self.fixed_flags[flag]
        if value is not None and value != fixed:
          raise ValueError(
              f"model.{flag}={value!r} does not fit model_type={self.model_type!r}: "
              f"its checkpoints have {flag}={fixed!r}"
          )
        resolved[flag] = fixed
      else:
        resolved[flag] = self.default_flags[flag] if value is None else value
    return resolved

  def layer_tensors(self, config: Architecture) -> dict[str, Tensor]:
    """Suffix after `model.layers.{i}.` -> tensor, for every layer param of `config`."""
    return {**common_layer_tensors(config), **self.added_layer_tensors(config)}

  def num_params(self, config: Architecture, include_embeddings: bool = True) -> int:
    """Parameters of `config` (the sizes of its Hugging Face tensors). Without embeddings:
    neither the embedding nor an untied lm_head."""
    layer = sum(math.prod(t.shape) for t in self.layer_tensors(config).values())
    top = sum(
        math.prod(t.shape)
        for t in top_tensors(config).values()
        if include_embeddings or t.param not in EMBEDDINGS
    )
    return config.num_layers * layer + top
