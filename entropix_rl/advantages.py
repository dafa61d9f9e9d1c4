"""Sequence-level advantage estimators for outcome rewards (GRPO family).

A batch holds N responses; responses to the same prompt share an integer id in
`group_ids [N]` (values in `[0, num_groups)`, `num_groups` static). Every estimator maps
`rewards [N]` to one advantage per response, computed with segment sums so that shapes are
static and the functions jit. `token_advantages` broadcasts them over a response mask, and
`compute_advantages(name, ...)` dispatches by name.

Conventions follow verl's `verl/trainer/ppo/core_algos.py` (`compute_grpo_outcome_advantage`,
`compute_rloo_outcome_advantage`, `compute_reinforce_plus_plus_baseline_outcome_advantage`):

* GRPO: group std with Bessel's correction (ddof=1, `torch.std`), `eps = 1e-6` added to the
  std; a singleton group gets mean 0 and std 1, so its advantage is `r / (1 + eps)`.
* RLOO: `r_i − mean_{j≠i} r_j`. Difference from verl: verl leaves a singleton's raw reward as
  its advantage; here a singleton gets 0 (no baseline exists, so there is no signal).
* REINFORCE++ baseline: the group mean is subtracted (singleton mean 0), then the result is
  whitened over the whole batch. verl whitens over the response *tokens*
  (`masked_whiten` of the broadcast `[N, T]` matrix), so each response is weighted by its
  length; pass `lengths` to reproduce that exactly, or leave it None to weight responses
  equally. Variance with Bessel's correction over the weight total, `rsqrt(var + 1e-8)`.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

GRPO_EPS = 1e-6
WHITEN_EPS = 1e-8


def _group_sum(x: jax.Array, group_ids: jax.Array, num_groups: int) -> jax.Array:
  return jax.ops.segment_sum(x, group_ids, num_segments=num_groups)


def _group_stats(
    rewards: jax.Array, group_ids: jax.Array, num_groups: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-response group size, group mean and unbiased (ddof=1) group std, each `[N]`."""
  ones = jnp.ones_like(rewards)
  count = _group_sum(ones, group_ids, num_groups)
  mean = _group_sum(rewards, group_ids, num_groups) / jnp.maximum(count, 1.0)
  centred = rewards - mean[group_ids]
  var = _group_sum(centred**2, group_ids, num_groups) / jnp.maximum(count - 1.0, 1.0)
  return count[group_ids], mean[group_ids], jnp.sqrt(var)[group_ids]


def grpo(
    rewards: jax.Array,
    group_ids: jax.Array,
    num_groups: int,
    *,
    eps: float = GRPO_EPS,
    std_normalize: bool = True,
) -> jax.Array:
  """GRPO advantage `A_i = (r_i − mean_g) / (std_g + eps)` (Shao et al. 2024, arXiv 2402.03300).

  Args:
    rewards: `[N]` scalar outcome reward per response.
    group_ids: `[N]` int, the prompt group of each response, in `[0, num_groups)`.
    num_groups: static number of groups; every id must lie in `[0, num_groups)`.
    eps: added to the group std.
    std_normalize: divide by the group std (GRPO); False gives Dr.GRPO's `r_i − mean_g`.

  Returns:
    `[N]` float32 advantages. Singleton groups use mean 0 and std 1, as verl.
  """
  chex.assert_rank([rewards, group_ids], 1)
  chex.assert_equal_shape([rewards, group_ids])
  chex.assert_type(group_ids, int)
  rewards = jnp.asarray(rewards, jnp.float32)
  count, mean, std = _group_stats(rewards, group_ids, num_groups)
  singleton = count < 2
  mean = jnp.where(singleton, 0.0, mean)
  if not std_normalize:
    return rewards - mean
  std = jnp.where(singleton, 1.0, std)
  return (rewards - mean) / (std + eps)


def dr_grpo(rewards: jax.Array, group_ids: jax.Array, num_groups: int) -> jax.Array:
  """Dr.GRPO advantage `A_i = r_i − mean_g`, no std (Liu et al. 2025, arXiv 2503.20783).

  Shapes as `grpo`; singleton groups use mean 0.
  """
  chex.assert_rank([rewards, group_ids], 1)
  chex.assert_equal_shape([rewards, group_ids])
  return grpo(rewards, group_ids, num_groups, std_normalize=False)


def rloo(rewards: jax.Array, group_ids: jax.Array, num_groups: int) -> jax.Array:
  """RLOO advantage `A_i = r_i − (1/(n−1)) Σ_{j≠i} r_j` (Ahmadian et al. 2024, arXiv 2402.14740).

  Equal to `n/(n−1) · (r_i − mean_g)`. Shapes as `grpo`; a singleton group gets 0.
  """
  chex.assert_rank([rewards, group_ids], 1)
  chex.assert_equal_shape([rewards, group_ids])
  chex.assert_type(group_ids, int)
  rewards = jnp.asarray(rewards, jnp.float32)
  count, mean, _ = _group_stats(rewards, group_ids, num_groups)
  scale = jnp.where(count > 1, count / jnp.maximum(count - 1.0, 1.0), 0.0)
  return scale * (rewards - mean)


def reinforce_pp_baseline(
    rewards: jax.Array,
    group_ids: jax.Array,
    num_groups: int,
    *,
    lengths: jax.Array | None = None,
    eps: float = WHITEN_EPS,
) -> jax.Array:
  """REINFORCE++ with a group-mean baseline, then batch whitening (Hu 2025, arXiv 2501.03262).

  `b_i = r_i − mean_g` (0 baseline for singletons), then with weights `w_i`
  (response lengths, or 1): `μ = Σ w b / W`, `σ² = Σ w (b − μ)² / (W − 1)` with `W = Σ w`,
  `A_i = (b_i − μ) / sqrt(σ² + eps)`.

  Args:
    rewards: `[N]` outcome rewards.
    group_ids: `[N]` int group ids in `[0, num_groups)`.
    num_groups: static number of groups.
    lengths: optional `[N]` response lengths in tokens (verl's token-level whitening);
      None weights every response equally.
    eps: added to the variance inside the square root (verl's `masked_whiten` uses 1e-8).

  Returns:
    `[N]` float32 advantages.
  """
  chex.assert_rank([rewards, group_ids], 1)
  chex.assert_equal_shape([rewards, group_ids] + ([] if lengths is None else [lengths]))
  chex.assert_type(group_ids, int)
  rewards = jnp.asarray(rewards, jnp.float32)
  count, mean, _ = _group_stats(rewards, group_ids, num_groups)
  centred = rewards - jnp.where(count < 2, 0.0, mean)
  weights = jnp.ones_like(rewards) if lengths is None else jnp.asarray(lengths, jnp.float32)
  total = weights.sum()
  batch_mean = (weights * centred).sum() / jnp.maximum(total, 1.0)
  var = (weights * (centred - batch_mean) ** 2).sum() / jnp.maximum(total - 1.0, 1.0)
  return (centred - batch_mean) * jax.lax.rsqrt(var + eps)


def token_advantages(advantages: jax.Array, mask: jax.Array) -> jax.Array:
  """Broadcasts `[N]` sequence advantages over the response tokens: `[N, T] = A[:, None] · m`."""
  chex.assert_rank([advantages, mask], [1, 2])
  chex.assert_equal_shape_prefix([advantages, mask], 1)
  return advantages[:, None].astype(jnp.float32) * mask.astype(jnp.float32)


ESTIMATORS: dict[str, Callable[..., jax.Array]] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce_pp_baseline": reinforce_pp_baseline,
}


def compute_advantages(
    name: str, rewards: jax.Array, group_ids: jax.Array, num_groups: int, **kwargs
) -> jax.Array:
  """Dispatches to the estimator `name` (a key of `ESTIMATORS`); returns `[N]` advantages.

  `kwargs` go to the estimator (e.g. `lengths=` for `reinforce_pp_baseline`).
  """
  if name not in ESTIMATORS:
    raise ValueError(f"advantage estimator {name!r} is unknown; allowed: {tuple(ESTIMATORS)}")
  return ESTIMATORS[name](rewards, group_ids, num_groups, **kwargs)
