"""Aggregating a `[B, T]` per-token loss into a scalar ("loss_agg_mode", INTERVENTIONS.md §0).

With `M` the aggregation mask (`m`, or `m ⊙ s` for selectors):

* `token-mean` (DAPO): `Σ M·L / Σ M`.
* `seq-mean-token-mean` (original GRPO): mean over sequences with at least one counted token
  of `Σ_t M·L / Σ_t M`.
* `seq-mean-token-sum-norm` (Dr.GRPO, Liu et al. 2025 arXiv 2503.20783):
  `Σ_i Σ_t M·L / (B · T)`, T the padded length. This is the Dr.GRPO paper's form (and the
  SIREN fork's); verl's `agg_loss` divides by T only, i.e. verl's value is B times ours.

Every mode returns 0 when no token counts; tokens with weight 0 never contribute, even if
their loss is not finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def aggregate(per_token: jax.Array, weights: jax.Array, mode: str) -> jax.Array:
  """Aggregates `per_token [B, T]` with mask/weights `[B, T]` by `mode` (a float32 scalar)."""
  per_token = jnp.asarray(per_token, jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  weighted = jnp.where(weights > 0, per_token, 0.0) * weights
  if mode == "token-mean":
    return weighted.sum() / jnp.maximum(weights.sum(), 1.0)
  if mode == "seq-mean-token-mean":
    tokens = weights.sum(axis=-1)
    seq_means = weighted.sum(axis=-1) / jnp.maximum(tokens, 1.0)
    has_tokens = (tokens > 0).astype(jnp.float32)
    return (seq_means * has_tokens).sum() / jnp.maximum(has_tokens.sum(), 1.0)
  if mode == "seq-mean-token-sum-norm":
    return weighted.sum() / (per_token.shape[0] * per_token.shape[1])
  raise ValueError(f"loss.agg={mode!r}; allowed: ('token-mean', 'seq-mean-token-mean', "
                   "'seq-mean-token-sum-norm')")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """`Σ m·x / max(Σ m, 1)` over all elements, float32."""
  mask = jnp.asarray(mask, jnp.float32)
  return (jnp.asarray(x, jnp.float32) * mask).sum() / jnp.maximum(mask.sum(), 1.0)
