"""Entropy-based advantage shaping (Cheng et al. 2025, arXiv 2506.14758).

    ψ_t = min(α · sg(H_t), |A_t| / κ),   A'_t = A_t + ψ_t   (valid tokens only)

applied before the surrogate (and so before any selection statistic). With κ > 1 the sign of
A is kept (for A < 0, A' ≤ A(1 − 1/κ) < 0); κ = 1 (the SIREN fork's re-implementation) can
cancel a negative advantage to 0. Entropy is detached: the shaping rescales the policy-gradient
signal only. The defaults α = 0.4, κ = 2 are recalled from the paper and UNVERIFIED.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_bool, check_number
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention


@dataclasses.dataclass(frozen=True)
class EntropyAdvantageConfig:
  """Constants of the entropy advantage shaper.

  Attributes:
    enabled: apply the shaping.
    alpha: α ≥ 0, entropy scale.
    kappa: κ ≥ 1, the bonus is capped at |A|/κ.
  """

  enabled: bool = False
  alpha: float = 0.4
  kappa: float = 2.0

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_number(f"{path}.alpha", self.alpha, low=0.0)
    check_number(
        f"{path}.kappa", self.kappa, low=1.0, allowed="a number >= 1 (κ > 1 keeps the sign of A)"
    )


def shape_advantages(
    advantages: jax.Array, entropy: jax.Array, mask: jax.Array, *, alpha: float, kappa: float
) -> jax.Array:
  """`A + m · min(α·sg(H), |A|/κ)`.

  Args:
    advantages: `[B, T]` advantages A.
    entropy: `[B, T]` current entropies H (detached here).
    mask: `[B, T]` response mask m.
    alpha, kappa: α, κ.

  Returns:
    `[B, T]` shaped advantages A'.
  """
  chex.assert_rank(advantages, 2)
  chex.assert_equal_shape([advantages, entropy, mask])
  bonus = jnp.minimum(alpha * jax.lax.stop_gradient(entropy), jnp.abs(advantages) / kappa)
  return advantages + bonus * mask


def _enabled(cfg: LossConfig) -> bool:
  return cfg.entropy_advantage.enabled


def entropy_advantage(cfg: LossConfig, batch: TokenBatch, stats: None, state: None) -> jax.Array:
  """The shaped `[B, T]` advantages (applied only when `loss.entropy_advantage.enabled`)."""
  del stats, state
  c = cfg.entropy_advantage
  entropy = batch.require("entropy", "entropy_advantage")
  chex.assert_rank(batch.advantages, 2)
  chex.assert_equal_shape([batch.advantages, entropy, batch.mask])
  return shape_advantages(batch.advantages, entropy, batch.mask, alpha=c.alpha, kappa=c.kappa)


INTERVENTION = Intervention(
    name="entropy_advantage",
    kind="advantage_shaper",
    apply=entropy_advantage,
    config=EntropyAdvantageConfig,
    active=_enabled,
    needs=lambda cfg: frozenset({"entropy"}),
)
