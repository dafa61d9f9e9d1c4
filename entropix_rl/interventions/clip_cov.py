"""Clip-Cov: detach a random few high-covariance tokens (Cui et al. 2025, arXiv 2505.22617,
Eq. 12; docs/interventions.md; verl `compute_policy_loss_clip_cov`).

With the centred covariance `c_t = (A_t − Ā)(ℓ_t − ℓ̄)` over the valid tokens of the scope
(`entropix_rl.dynamics.token_covariance`, current ℓ, no gradient):

    eligible  E = {t : m_t = 1, not (L2_t > L1_t), ω_low < c_t < ω_high}
    I_clip    = uniform random subset of E of size min(max(1, floor(ρ·N)), |E|)
    L_t       = L^ppo_t · (1 − 1[t ∈ I_clip])

Picked tokens carry zero loss and exactly zero gradient but stay in the aggregation
denominator. The random pick uses the explicit `rng` (reproducible for a fixed key).
The reference has no dual-clip; `dual_clip_c` applies to the kept tokens if set.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl import dynamics
from entropix_rl.checks import check_number, check_ratio
from entropix_rl.interventions import selection
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.ppo import ppo_terms_from_config
from entropix_rl.interventions.registry import Intervention, SurrogateOutput


@dataclasses.dataclass(frozen=True)
class ClipCovConfig:
  """Clip-Cov constants (verl `clip_cov_ratio`, `clip_cov_lb`, `clip_cov_ub`).

  Attributes:
    ratio: r_clip, fraction of the scope's valid tokens to detach (paper: 2e-4).
    lb: ω_low, exclusive lower covariance bound (1.0).
    ub: ω_high, exclusive upper covariance bound (5.0).
  """

  ratio: float = 2e-4
  lb: float = 1.0
  ub: float = 5.0

  def validate(self, path: str) -> None:
    check_ratio(f"{path}.ratio", self.ratio)
    check_number(f"{path}.lb", self.lb)
    check_number(
        f"{path}.ub", self.ub, low=self.lb, low_open=True, allowed=f"a number > {path}.lb={self.lb}"
    )


def clip_cov_pick(
    logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    clipped: jax.Array,
    key: jax.Array,
    *,
    ratio: float,
    lb: float,
    ub: float,
) -> jax.Array:
  """The Clip-Cov pick within one scope chunk.

  Args:
    logp: `[rows, T]` current log-probs.
    advantages: `[rows, T]` advantages.
    mask: `[rows, T]` float response mask.
    clipped: `[rows, T]` bool, tokens already clipped by PPO (never picked).
    key: PRNG key for the uniform random subset.
    ratio, lb, ub: see `ClipCovConfig`.

  Returns:
    `[rows, T]` bool.
  """
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, advantages, mask, clipped])
  chex.assert_type(clipped, bool)
  valid = mask > 0
  cov = dynamics.token_covariance(logp, advantages, mask)
  eligible = valid & ~clipped & (cov > lb) & (cov < ub)
  k = jnp.maximum(1, selection.count_floor(ratio, valid.sum()))
  k_max = max(1, selection.count_floor(ratio, mask.size))
  uniform = jax.random.uniform(key, mask.shape)
  return selection.top_k_mask(uniform.ravel(), eligible.ravel(), k, k_max).reshape(mask.shape)


def clip_cov_stats(
    cfg: LossConfig, batch: TokenBatch, state: None, key: jax.Array | None
) -> jax.Array:
  """The scope's pick I_clip (`[rows, T]` bool), from the current ℓ without gradient (the
  `[rows, T]` fields `logp`, `old_logp`, `advantages`, `mask`)."""
  del state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  if key is None:
    raise ValueError("loss.name='clip_cov' picks tokens at random: pass rng= to policy_loss")
  c = cfg.clip_cov
  clipped = ppo_terms_from_config(cfg, batch).clipped
  return clip_cov_pick(
      batch.logp, batch.advantages, batch.mask, clipped, key, ratio=c.ratio, lb=c.lb, ub=c.ub
  )


def clip_cov(
    cfg: LossConfig, batch: TokenBatch, selected: jax.Array, state: None
) -> SurrogateOutput:
  """Clip-Cov surrogate (module docstring); `selected` is the detached set I_clip, `[B, T]` bool
  as the batch fields."""
  del state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  chex.assert_equal_shape([batch.logp, selected])
  chex.assert_type(selected, bool)
  terms = ppo_terms_from_config(cfg, batch)
  return SurrogateOutput(
      per_token_loss=jnp.where(selected, 0.0, terms.loss),
      loss_mask=batch.mask,
      selected=selected,
      clipped=terms.clipped,
  )


INTERVENTION = Intervention(
    name="clip_cov",
    kind="surrogate",
    apply=clip_cov,
    config=ClipCovConfig,
    scope_stats=clip_cov_stats,
)
