"""Aggregating a `[B, T]` per-token loss into a scalar ("loss_agg_mode"), exactly under
gradient accumulation.

With `M` the aggregation mask (`m`, or `m ⊙ s` for selectors) over the B rows of one
optimizer mini-batch:

* `token-mean` (DAPO): `Σ M·L / Σ M`.
* `seq-mean-token-mean` (original GRPO): mean over sequences with at least one counted token
  of `Σ_t M·L / Σ_t M`.
* `seq-mean-token-sum-norm` (Dr.GRPO, Liu et al. 2025 arXiv 2503.20783):
  `Σ_i Σ_t M·L / (B · T)`, T the padded length, or `loss.loss_scale_factor` when set (a
  constant, as Dr.GRPO intends; the trainer sets it to the response budget when it trims the
  completion axis, so trimming never changes the loss). verl 0.9.1's `agg_loss` gives the same value:
  it divides by T and by its `global_batch_size`, which its trainer sets to the mini-batch's
  rows (older verl commits divided by T only).
* `sum`: `Σ M·L` (for counts in metrics).

Every mode returns 0 when no token counts; tokens with weight 0 never contribute, even if
their loss is not finite.

**Micro-batches.** Each mode is `Σ w·L` with weights `w` that depend on the whole mini-batch
only through three numbers: `Σ M`, the rows with a counted token and the row count. An
`Aggregator` in `whole` mode computes them (and the value) from the batch it sees and records
them per call; in `share` mode it returns a micro-batch's share `Σ_micro w·L` with the
recorded normalisers (the shares add up to the mini-batch value); in `replay` mode it returns
`sg(A) + a − sg(a)` with `A` the recorded mini-batch value and `a` the share, so any
function `f(Agg)` of an aggregate has the value of the mini-batch and the gradient
`f'(A)·∇a`, whose sum over micro-batches is the mini-batch gradient.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
_ALL_MODES = AGG_MODES + ("sum",)


def _normalisers(weights: jax.Array) -> dict[str, jax.Array]:
  rows_with_tokens = (weights.sum(axis=-1) > 0).sum().astype(jnp.float32)
  return {
      "total": weights.sum(),
      "rows_with_tokens": rows_with_tokens,
      "rows": jnp.float32(weights.shape[0]),
  }


def _weighted_sum(
    per_token: jax.Array,
    weights: jax.Array,
    mode: str,
    norm: dict[str, jax.Array],
    length: int | None = None,
) -> jax.Array:
  """`Σ w·L` over the given rows, with the mini-batch normalisers `norm` (and the constant
  sequence length `length` of `seq-mean-token-sum-norm`, default the padded length)."""
  weighted = jnp.where(weights > 0, per_token, 0.0) * weights
  if mode == "token-mean":
    return weighted.sum() / jnp.maximum(norm["total"], 1.0)
  if mode == "seq-mean-token-mean":
    tokens = weights.sum(axis=-1)
    seq_means = weighted.sum(axis=-1) / jnp.maximum(tokens, 1.0)
    return (seq_means * (tokens > 0)).sum() / jnp.maximum(norm["rows_with_tokens"], 1.0)
  if mode == "seq-mean-token-sum-norm":
    return weighted.sum() / (norm["rows"] * (length or per_token.shape[1]))
  if mode == "sum":
    return weighted.sum()
  raise ValueError(f"loss.agg={mode!r}; allowed: {AGG_MODES}")


def aggregate(
    per_token: jax.Array, weights: jax.Array, mode: str, length: int | None = None
) -> jax.Array:
  """Aggregates `per_token [B, T]` with mask/weights `[B, T]` by `mode` (a float32 scalar)."""
  chex.assert_rank(per_token, 2)
  chex.assert_equal_shape([per_token, weights])
  per_token = jnp.asarray(per_token, jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  return _weighted_sum(per_token, weights, mode, _normalisers(weights), length)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """`Σ m·x / max(Σ m, 1)` over all elements of `x` and `mask` (equal shapes), float32."""
  chex.assert_equal_shape([x, mask])
  mask = jnp.asarray(mask, jnp.float32)
  return (jnp.asarray(x, jnp.float32) * mask).sum() / jnp.maximum(mask.sum(), 1.0)


class Aggregator:
  """Aggregation that stays exact when a mini-batch is split into micro-batches.

  Call it as `agg(values [B, T], weights [B, T], mode=None)` (default mode: `loss.agg`). Calls
  are matched between the planning and the micro-batch passes by their order, which is fixed
  by the (deterministic) loss code.

  Attributes:
    mode: "whole", "share" or "replay" (module docstring).
    default: the default aggregation mode (`loss.agg`).
    length: the constant length of `seq-mean-token-sum-norm` (`loss.loss_scale_factor`), or
      None for the padded length.
    records: one dict per call: the normalisers and, in `whole` mode, the value.
  """

  def __init__(
      self,
      default: str,
      mode: str = "whole",
      records: list[dict] | None = None,
      length: int | None = None,
  ):
    if mode not in ("whole", "share", "replay"):
      raise ValueError(f"Aggregator mode={mode!r}; allowed: whole, share, replay")
    if mode != "whole" and records is None:
      raise ValueError(f"Aggregator mode={mode!r} needs the records of a `whole` pass")
    self.default, self.mode, self.length = default, mode, length
    self.records = [] if records is None else records
    self._next = 0

  def __call__(
      self, per_token: jax.Array, weights: jax.Array, mode: str | None = None
  ) -> jax.Array:
    chex.assert_rank(per_token, 2)
    chex.assert_equal_shape([per_token, weights])
    mode = self.default if mode is None else mode
    if mode not in _ALL_MODES:
      raise ValueError(f"loss.agg={mode!r}; allowed: {AGG_MODES}")
    per_token = jnp.asarray(per_token, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    if self.mode == "whole":
      norm = jax.lax.stop_gradient(_normalisers(weights))
      value = _weighted_sum(per_token, weights, mode, norm, self.length)
      self.records.append(dict(norm, value=jax.lax.stop_gradient(value)))
      return value
    if self._next >= len(self.records):
      raise ValueError("the micro-batch pass aggregates more often than the planning pass did")
    record = self.records[self._next]
    self._next += 1
    share = _weighted_sum(per_token, weights, mode, record, self.length)
    if self.mode == "share":
      return share
    return record["value"] + share - jax.lax.stop_gradient(share)


def aggregator(cfg, mode: str = "whole", records: list[dict] | None = None) -> Aggregator:
  """The `Aggregator` of a resolved `LossConfig` (its `agg` and `loss_scale_factor`)."""
  return Aggregator(cfg.agg, mode, records, length=cfg.loss_scale_factor)
