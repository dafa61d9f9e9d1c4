"""CISPO: clip the importance-sampling weight, keep every token's gradient (MiniMax et al. 2025,
"MiniMax-M1", arXiv 2506.13585, §3.1; verl `compute_policy_loss_cispo`).

Per token, with `r = exp(clip(ℓ − ℓᵒˡᵈ, −20, 20))`:

    w_t = sg(clip(r_t, 1 − ε_l, 1 + ε_h)),   L_t = −w_t · A_t · ℓ_t

No token is dropped: every valid token gets the REINFORCE gradient `−w_t · A_t · ∇ℓ_t`, the
clipped weight only bounds its size. The paper puts no lower bound on the weight (a large
ε_l) and tunes ε_h only; we did not find its ε_h value (UNVERIFIED). The defaults are verl's
CISPO example (`clip_ratio_low=10`, `clip_ratio_high=0.2`), with ε_l = 1 standing for "no
lower bound" (any ε_l ≥ 1 gives the same loss, since r > 0). `loss.clip_eps_*` and `loss.dual_clip_c` are
not used. The paper aggregates with the token mean (`loss.agg = 'token-mean'`).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_number
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.ppo import importance_ratio
from entropix_rl.interventions.registry import Intervention, SurrogateOutput


@dataclasses.dataclass(frozen=True)
class CISPOConfig:
  """CISPO's clip range for the importance-sampling weight.

  Attributes:
    clip_eps_low: ε_l ≥ 0; the weight is clipped below at 1 − ε_l (1.0: no lower bound).
    clip_eps_high: ε_h ≥ 0; the weight is clipped above at 1 + ε_h (0.2).
  """

  clip_eps_low: float = 1.0
  clip_eps_high: float = 0.2

  def validate(self, path: str) -> None:
    check_number(f"{path}.clip_eps_low", self.clip_eps_low, low=0.0)
    check_number(f"{path}.clip_eps_high", self.clip_eps_high, low=0.0)


def cispo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
) -> tuple[jax.Array, jax.Array]:
  """`−sg(clip(r, 1 − ε_l, 1 + ε_h)) · A · ℓ` per token.

  Args:
    logp: `[B, T]` current log-probs ℓ (differentiable).
    old_logp: `[B, T]` behaviour log-probs ℓᵒˡᵈ.
    advantages: `[B, T]` advantages A (treated as constants).
    clip_eps_low: ε_l.
    clip_eps_high: ε_h.

  Returns:
    `(loss [B, T], clipped [B, T] bool)`; `clipped` marks tokens whose weight is clipped.
  """
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, old_logp, advantages])
  ratio = jax.lax.stop_gradient(importance_ratio(logp, old_logp))
  weight = jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
  loss = -weight * jax.lax.stop_gradient(advantages) * logp
  return loss, (ratio < 1.0 - clip_eps_low) | (ratio > 1.0 + clip_eps_high)


def cispo(cfg: LossConfig, batch: TokenBatch, stats: None, state: None) -> SurrogateOutput:
  """CISPO surrogate over all valid tokens (`[B, T]` batch fields); picks nothing."""
  del stats, state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  c = cfg.cispo
  valid = batch.mask > 0
  loss, clipped = cispo_loss(
      jnp.where(valid, batch.logp, 0.0),
      jnp.where(valid, batch.old_logp, 0.0),
      jnp.where(valid, batch.advantages, 0.0),
      clip_eps_low=c.clip_eps_low,
      clip_eps_high=c.clip_eps_high,
  )
  return SurrogateOutput.unpicked(loss, batch.mask, clipped)


INTERVENTION = Intervention(name="cispo", kind="surrogate", apply=cispo, config=CISPOConfig)
