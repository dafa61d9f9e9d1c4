"""The PPO clipped surrogate with clip-higher and dual-clip (docs/interventions.md).

Per token, with `r = exp(clip(ℓ − ℓ^old, −20, 20))` (verl clamps the log-ratio before exp):

    L1 = −A·r,   L2 = −A·clip(r, 1 − ε_l, 1 + ε_h),   L^ppo = max(L1, L2)
    dual-clip (A < 0):   L = min(L^ppo, −A·c)

PPO: Schulman et al. 2017 (arXiv 1707.06347); clip-higher ε_h > ε_l: DAPO, Yu et al. 2025
(arXiv 2503.14476); dual-clip: Ye et al. 2020 (arXiv 1912.09729), as verl's
`compute_policy_loss_vanilla`.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention, SurrogateOutput

LOG_RATIO_CLAMP = 20.0


class PPOTerms(NamedTuple):
  """Per-token PPO pieces, all `[B, T]`.

  Attributes:
    ratio: `r = exp(clip(ℓ − ℓ^old, −20, 20))`.
    loss: `L^ppo` (with dual-clip when configured).
    clipped: bool, `L2 > L1` (the clip bound is active and cuts the gradient).
  """

  ratio: jax.Array
  loss: jax.Array
  clipped: jax.Array


def importance_ratio(logp: jax.Array, old_logp: jax.Array) -> jax.Array:
  """`r = exp(clip(ℓ − ℓ^old, −20, 20))`.

  Args:
    logp: `[B, T]` current log-probs ℓ.
    old_logp: `[B, T]` behaviour log-probs ℓ^old.

  Returns:
    `[B, T]` importance ratios r.
  """
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, old_logp])
  return jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def ppo_terms(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    *,
    clip_eps_low: float | jax.Array,
    clip_eps_high: float | jax.Array,
    dual_clip_c: float | None = None,
) -> PPOTerms:
  """Clipped PPO token loss `max(−A·r, −A·clip(r, 1−ε_l, 1+ε_h))`, dual-clipped if `c` is set.

  Args:
    logp: `[B, T]` current log-probs ℓ (differentiable).
    old_logp: `[B, T]` behaviour log-probs ℓ^old.
    advantages: `[B, T]` advantages A (treated as constants).
    clip_eps_low: ε_l, a float or per-token `[B, T]` values (HAPO's adaptive clip).
    clip_eps_high: ε_h, likewise.
    dual_clip_c: c > 1 or None; for A < 0 the loss is capped at `−A·c`.

  Returns:
    `PPOTerms`, each `[B, T]`.
  """
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, old_logp, advantages])
  for eps in (clip_eps_low, clip_eps_high):
    if jnp.ndim(eps):  # per-token values; a float needs no check
      chex.assert_shape(eps, logp.shape)
  advantages = jax.lax.stop_gradient(advantages)
  ratio = importance_ratio(logp, jax.lax.stop_gradient(old_logp))
  l1 = -advantages * ratio
  l2 = -advantages * jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
  loss = jnp.maximum(l1, l2)
  if dual_clip_c is not None:
    loss = jnp.where(advantages < 0, jnp.minimum(loss, -advantages * dual_clip_c), loss)
  return PPOTerms(ratio=ratio, loss=loss, clipped=l2 > l1)


def ppo_terms_from_config(cfg: LossConfig, batch: TokenBatch) -> PPOTerms:
  """`ppo_terms` of the batch's `[B, T]` `logp`, `old_logp` and `advantages` with the clip
  settings of `cfg`."""
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages])
  return ppo_terms(
      batch.logp,
      batch.old_logp,
      batch.advantages,
      clip_eps_low=cfg.clip_eps_low,
      clip_eps_high=cfg.clip_eps_high,
      dual_clip_c=cfg.dual_clip_c,
  )


def ppo(cfg: LossConfig, batch: TokenBatch, stats: None, state: None) -> SurrogateOutput:
  """Vanilla PPO/GRPO surrogate over all valid tokens (`[B, T]` batch fields); picks nothing."""
  del stats, state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  terms = ppo_terms_from_config(cfg, batch)
  return SurrogateOutput.unpicked(terms.loss, batch.mask, terms.clipped)


INTERVENTION = Intervention(name="ppo", kind="surrogate", apply=ppo)
