"""GPPO / CE-GPPO: gradient-preserving clipping (Kwai-Klear).

Per token, with `r = exp(clip(ℓ − ℓᵒˡᵈ, −20, 20))` and the gradient-preserving factor
`g = exp(ℓ − sg(ℓ))` (value 1, gradient ∇ℓ):

    A < 0 and r < 1 − ε_l:   L = −β1 · (1 − ε_l) · g · A
    A > 0 and r > 1 + ε_h:   L = −β2 · (1 + ε_h) · g · A
    otherwise:               L = −r · A
    dual-clip (A < 0):       L = min(L, −A·c)

On a clipped token the forward value is PPO's clipped value scaled by β, but the gradient is
`−β·(1 ± ε)·A·∇ℓ` instead of 0. Building the factor as `exp(ℓ − sg(ℓ))` rather than
`r / sg(r)` keeps that gradient at any log-ratio: a clamp on the forward value of `r` cannot
remove it (at log r = +25, A > 0 the gradient is `−β2(1 + ε_h)·A·∇ℓ`).

GPPO (Klear-Reasoner, Su et al. 2025, arXiv 2508.07629) is β1 = β2 = 1. CE-GPPO (Su et al.
2025, arXiv 2509.20712; Kwai-Klear/CE-GPPO @ 10558fe, `compute_gppo_loss_general_beta`)
weights the two clipped sides separately; its recipes also add a positive NLL term over the
responses with reward 1 (`dp_actor.py`, `positive_loss_coeff`), the `positive_nll`
regulariser here:

    L += positive_nll_coef · Agg(−ℓ, m ⊙ 1[reward = 1])

which acts only with `loss.name = 'gppo'` and a coefficient > 0.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_number
from entropix_rl.interventions.aggregation import Aggregator
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.ppo import importance_ratio
from entropix_rl.interventions.registry import Intervention, RegulariserOutput, SurrogateOutput

POSITIVE_REWARD = 1.0


@dataclasses.dataclass(frozen=True)
class GPPOConfig:
  """Constants of GPPO / CE-GPPO.

  Attributes:
    beta1: β1 ≥ 0, gradient scale on clipped tokens with A < 0 (r < 1 − ε_l). The CE-GPPO 7B
      script uses 0.75 (our default), the 1.5B script 0.5; the function and yaml default of
      the authors' code is 0.25. GPPO is β1 = β2 = 1.
    beta2: β2 ≥ 0, gradient scale on clipped tokens with A > 0 (r > 1 + ε_h); 1.0.
    positive_nll_coef: coefficient ≥ 0 of the CE-GPPO recipes' NLL term over responses with
      reward 1 (`positive_loss_coeff`, 0.1 in the recipes; 0 = off).
  """

  beta1: float = 0.75
  beta2: float = 1.0
  positive_nll_coef: float = 0.0

  def validate(self, path: str) -> None:
    check_number(f"{path}.beta1", self.beta1, low=0.0)
    check_number(f"{path}.beta2", self.beta2, low=0.0)
    check_number(f"{path}.positive_nll_coef", self.positive_nll_coef, low=0.0)


def preserving_factor(logp: jax.Array) -> jax.Array:
  """`g = exp(ℓ − sg(ℓ))`: value 1, gradient ∇ℓ at any log-ratio (module docstring).

  Args:
    logp: `[B, T]` float current log-probs ℓ (differentiable).

  Returns:
    `[B, T]` g.
  """
  chex.assert_rank(logp, 2)
  chex.assert_type(logp, float)
  return jnp.exp(logp - jax.lax.stop_gradient(logp))


def gppo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    beta1: float,
    beta2: float,
    dual_clip_c: float | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The gradient-preserving clipped token loss (module docstring).

  Args:
    logp: `[B, T]` current log-probs ℓ (differentiable).
    old_logp: `[B, T]` behaviour log-probs ℓᵒˡᵈ.
    advantages: `[B, T]` advantages A (treated as constants).
    clip_eps_low: ε_l.
    clip_eps_high: ε_h.
    beta1: β1, scale of the preserved gradient on the lower clipped side (A < 0).
    beta2: β2, scale of the preserved gradient on the upper clipped side (A > 0).
    dual_clip_c: c > 1 or None; for A < 0 the loss is capped at `−A·c`.

  Returns:
    `(loss [B, T], clipped [B, T] bool)`; `clipped` marks the two gradient-preserving cases.
  """
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, old_logp, advantages])
  advantages = jax.lax.stop_gradient(advantages)
  ratio = importance_ratio(logp, jax.lax.stop_gradient(old_logp))
  preserve = preserving_factor(logp)
  low = (advantages < 0) & (ratio < 1.0 - clip_eps_low)
  high = (advantages > 0) & (ratio > 1.0 + clip_eps_high)
  loss = jnp.where(
      low,
      -beta1 * (1.0 - clip_eps_low) * preserve * advantages,
      jnp.where(high, -beta2 * (1.0 + clip_eps_high) * preserve * advantages, -ratio * advantages),
  )
  if dual_clip_c is not None:
    loss = jnp.where(advantages < 0, jnp.minimum(loss, -advantages * dual_clip_c), loss)
  return loss, low | high


def _valid(batch: TokenBatch, x: jax.Array) -> jax.Array:
  return jnp.where(batch.mask > 0, x, 0.0)


def gppo(cfg: LossConfig, batch: TokenBatch, stats: None, state: None) -> SurrogateOutput:
  """GPPO / CE-GPPO surrogate over all valid tokens (`[B, T]` batch fields); picks nothing."""
  del stats, state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  c = cfg.gppo
  loss, clipped = gppo_loss(
      _valid(batch, batch.logp),
      _valid(batch, batch.old_logp),
      _valid(batch, batch.advantages),
      clip_eps_low=cfg.clip_eps_low,
      clip_eps_high=cfg.clip_eps_high,
      beta1=c.beta1,
      beta2=c.beta2,
      dual_clip_c=cfg.dual_clip_c,
  )
  return SurrogateOutput.unpicked(loss, batch.mask, clipped)


def _nll_active(cfg: LossConfig) -> bool:
  return cfg.name == "gppo" and cfg.gppo.positive_nll_coef > 0


def positive_nll(
    cfg: LossConfig, batch: TokenBatch, stats: None, state: None, agg: Aggregator
) -> RegulariserOutput:
  """`coef · Agg(−ℓ, m ⊙ 1[reward = 1])`; metric `Agg(−ℓ)` over those tokens (`logp`, `mask`
  `[B, T]`, `rewards` `[B]`)."""
  del stats, state
  rewards = batch.require("rewards", "positive_nll")
  chex.assert_rank([batch.logp, rewards], [2, 1])
  chex.assert_equal_shape([batch.logp, batch.mask])
  chex.assert_equal_shape_prefix([batch.logp, rewards], 1)
  weights = batch.mask * (rewards == POSITIVE_REWARD)[:, None].astype(jnp.float32)
  nll = agg(jnp.where(weights > 0, -batch.logp, 0.0), weights)
  return RegulariserOutput(loss=cfg.gppo.positive_nll_coef * nll, metric=jax.lax.stop_gradient(nll))


INTERVENTION = Intervention(name="gppo", kind="surrogate", apply=gppo, config=GPPOConfig)
POSITIVE_NLL = Intervention(
    name="positive_nll",
    kind="regulariser",
    apply=positive_nll,
    active=_nll_active,
    needs=lambda cfg: frozenset({"rewards"}),
)
