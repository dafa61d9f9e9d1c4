"""`TokenBatch`: every per-token quantity an intervention may read, in one typed pytree.

Arrays are `[B, T]` (B responses, T completion positions) unless noted `[B]`. The trainer fills
only what the active interventions declare in their `needs` (see `interventions.registry`), so the
old entropy, the reference log-probs or a logit feature are computed only when some
intervention reads them; the others stay None (or absent from the feature dicts).
"""

from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp

# Names an intervention may list in `needs` besides its own logit features.
FIELDS = (
    "entropy",
    "old_entropy",
    "ref_logp",
    "group_ids",
    "response_ids",
    "step_ids",
    "rewards",
    "cluster_ids",
)


@flax.struct.dataclass
class TokenBatch:
  """The loss inputs of one (mini- or micro-)batch.

  Attributes:
    logp: ℓ, current log-prob of the sampled token at the rollout temperature
      (differentiable).
    old_logp: ℓᵒˡᵈ, behaviour-policy log-prob (constant).
    advantages: A, per-token advantages (constant).
    mask: m, float32 1 on response tokens that count.
    entropy: H, current full-vocabulary entropy of the tempered distribution; differentiable
      only when an intervention differentiates it.
    old_entropy: Hᵒˡᵈ, the same under the behaviour policy (constant).
    ref_logp: reference-policy log-prob (constant).
    group_ids: `[B]` int32 prompt group of each response.
    response_ids: `[B]` int32 index of each response in the rollout.
    step_ids: `[B, T]` int32 step (turn) index of each token, 0, 1, ... within each response
      (`step_ids_from_tokens`; all 0 for single-step responses).
    rewards: `[B]` float32 sequence rewards.
    cluster_ids: `[B]` int32 answer cluster of each response within its group, numbered from 0
      in order of first appearance (by exact string or by value, `rl.cluster_by`), −1 for a
      response without an answer (a cluster of its own).
    features: name → `[B, T]` current-policy logit features declared by interventions
      (differentiable when declared so).
    old_features: name → `[B, T]` behaviour-policy logit features (constant).
    info: name → `[B]` or `[B, T]` arrays that rollout-side interventions attach to rows
      (`train.rollout.Responses.info`), constant.
  """

  logp: jax.Array
  old_logp: jax.Array
  advantages: jax.Array
  mask: jax.Array
  entropy: jax.Array | None = None
  old_entropy: jax.Array | None = None
  ref_logp: jax.Array | None = None
  group_ids: jax.Array | None = None
  response_ids: jax.Array | None = None
  step_ids: jax.Array | None = None
  rewards: jax.Array | None = None
  cluster_ids: jax.Array | None = None
  features: dict[str, jax.Array] = flax.struct.field(default_factory=dict)
  old_features: dict[str, jax.Array] = flax.struct.field(default_factory=dict)
  info: dict[str, jax.Array] = flax.struct.field(default_factory=dict)

  @property
  def shape(self) -> tuple[int, int]:
    return self.logp.shape

  def require(self, name: str, who: str) -> jax.Array:
    """The field or feature `name`, or a ValueError naming the intervention that needs it."""
    value = (
        getattr(self, name, None)
        if name in FIELDS
        else self.features.get(name, self.old_features.get(name, self.info.get(name)))
    )
    if value is None:
      raise ValueError(
          f"{who} reads {name!r}, which this TokenBatch does not hold; declare it in "
          f"the intervention's `needs` (the trainer fills only declared fields)"
      )
    return value


def step_ids_from_tokens(completion: jax.Array, delimiter_id: int) -> jax.Array:
  """The step index of every completion token: the number of delimiter tokens before it.

      step_ids[b, t] = #{s < t : completion[b, s] = delimiter_id}

  A delimiter token belongs to the step it ends ("12+" is step 0 of "12+34", "34" step 1).
  With `delimiter_id < 0` (no delimiter) every response is one step.

  Args:
    completion: `[B, T]` int completion tokens.
    delimiter_id: the delimiter's token id, or −1.

  Returns:
    `[B, T]` int32.
  """
  chex.assert_rank(completion, 2)
  if delimiter_id < 0:
    return jnp.zeros(completion.shape, jnp.int32)
  ends = (jnp.asarray(completion) == delimiter_id).astype(jnp.int32)
  return jnp.cumsum(ends, axis=1) - ends


def stop_gradient_except(batch: TokenBatch, keep: frozenset[str]) -> TokenBatch:
  """`batch` with the gradient stopped everywhere but `logp` and the fields/features in `keep`
  (casts every float array to float32)."""

  def fix(name, x, constant):
    if x is None:
      return None
    x = jnp.asarray(x)
    x = x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.lax.stop_gradient(x) if constant and name not in keep else x

  fields: dict[str, Any] = {
      name: fix(name, getattr(batch, name), True)
      for name in ("old_logp", "advantages", "mask") + FIELDS
  }
  fields["logp"] = fix("logp", batch.logp, False)
  fields["features"] = {k: fix(k, v, True) for k, v in batch.features.items()}
  fields["old_features"] = {k: fix(k, v, True) for k, v in batch.old_features.items()}
  fields["info"] = {k: fix(k, v, True) for k, v in batch.info.items()}
  return batch.replace(**fields)
