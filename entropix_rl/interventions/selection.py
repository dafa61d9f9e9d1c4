"""Token selection with static shapes (docs/interventions.md, "Selection scope").

The number of picked tokens depends on the number N of valid tokens, which is traced. A pick
is the `k` best eligible scores, taken from `lax.top_k` with a static bound `k_max` (the count
for a scope whose tokens are all valid) and kept where `rank < k`; ineligible scores are
−inf and never kept. Ties go to the lower flat index.

Counts are exact in rational arithmetic: a ratio ρ is read as the decimal fraction p/q it was
written as (`0.002 = 1/500`), so `floor(ρN) = p·(N // q) + (p·(N % q)) // q` in int32 with no
float rounding (`floor(0.2 · 5) = 1`, never 0). Ratios with long decimal expansions are
approximated by the nearest fraction with denominator ≤ 2^15.

Scope: with `selection_scope='batch'` every statistic is taken over the whole batch passed
in; with `'microbatch'` the rows are split into consecutive chunks of `microbatch_size`
sequences and each chunk selects on its own (as verl, which calls the loss per micro-batch).
The batch scope is the one-chunk case, so a micro-batch as large as the batch gives exactly
the batch-scope pick (random picks included: chunk c draws with `fold_in(rng, c)`).
"""

from __future__ import annotations

from collections.abc import Callable
import fractions
from typing import Any

import chex
import jax
import jax.numpy as jnp

from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig

_MAX_DENOMINATOR = 2**15


def _fraction(ratio: float) -> tuple[int, int]:
  frac = fractions.Fraction(repr(float(ratio)))
  if (frac.numerator + 1) * frac.denominator >= 2**31:
    frac = frac.limit_denominator(_MAX_DENOMINATOR)
  return frac.numerator, frac.denominator


def count_floor(ratio: float, n):
  """`floor(ratio · n)` exactly, for a Python int or an int32 array `n`."""
  p, q = _fraction(ratio)
  return p * (n // q) + (p * (n % q)) // q


def count_ceil(ratio: float, n):
  """`ceil(ratio · n)` exactly, for a Python int or an int32 array `n`."""
  p, q = _fraction(ratio)
  return p * (n // q) + (p * (n % q) + q - 1) // q


def top_k_mask(score: jax.Array, eligible: jax.Array, k: jax.Array, k_max: int) -> jax.Array:
  """The `k` highest-scoring eligible entries of a flat array, as a bool mask.

  Args:
    score: `[n]` float scores.
    eligible: `[n]` bool; only eligible entries can be picked.
    k: traced int, how many to pick (at most `k_max`; fewer if fewer are eligible).
    k_max: static upper bound on `k`, `1 <= k_max <= n`.

  Returns:
    `[n]` bool.
  """
  chex.assert_rank([score, eligible, k], [1, 1, 0])
  chex.assert_equal_shape([score, eligible])
  chex.assert_type(eligible, bool)
  masked = jnp.where(eligible, score.astype(jnp.float32), -jnp.inf)
  _, index = jax.lax.top_k(masked, k_max)
  keep = jnp.arange(k_max) < k
  return jnp.zeros(score.shape, bool).at[index].set(keep) & eligible


def chunk_rows(cfg: LossConfig, batch_rows: int) -> int:
  """Sequences per selection chunk: the batch, or `microbatch_size` (capped at the batch)."""
  if cfg.selection_scope == "batch":
    return batch_rows
  rows = min(cfg.microbatch_size, batch_rows)
  if batch_rows % rows:
    raise ValueError(
        f"loss.microbatch_size={cfg.microbatch_size} must divide the batch of "
        f"{batch_rows} sequences passed to policy_loss"
    )
  return rows


def per_scope(
    cfg: LossConfig,
    fn: Callable[[TokenBatch, jax.Array | None], Any],
    batch: TokenBatch,
    rng: jax.Array | None,
) -> Any:
  """Runs `fn(chunk, key)` on each scope chunk of `batch` and reassembles the rows.

  Args:
    cfg: the loss config (its `selection_scope` and `microbatch_size`).
    fn: maps a `TokenBatch` of `rows` rows and a key to a pytree whose leaves have `rows` as
      leading axis; `key` is `fold_in(rng, chunk_index)` (None when `rng` is None).
    batch: the `[B, ...]` batch to split along its rows.
    rng: PRNG key, or None for deterministic rules.

  Returns:
    `fn`'s pytree with `B` leading rows.
  """
  chex.assert_rank(batch.logp, 2)
  chex.assert_tree_shape_prefix(batch, batch.logp.shape[:1])
  batch_rows = batch.logp.shape[0]
  rows = chunk_rows(cfg, batch_rows)
  chunks = batch_rows // rows
  split = jax.tree.map(lambda a: a.reshape((chunks, rows) + a.shape[1:]), batch)
  keys = None if rng is None else jax.vmap(lambda c: jax.random.fold_in(rng, c))(jnp.arange(chunks))
  out = jax.vmap(fn)(split, keys)
  return jax.tree.map(lambda a: a.reshape((batch_rows,) + a.shape[2:]), out)
