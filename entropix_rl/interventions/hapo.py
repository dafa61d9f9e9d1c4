"""HAPO's loss side: entropy-adaptive clipping and advantage redistribution (Liu et al. 2025,
"From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature",
arXiv 2509.16591; starriver030515/HAPO @ 7671dde, `compute_entropy_h`, `ada_clip`,
`ada_advantage`, `compute_policy_loss`).

Normalised entropy score over the valid tokens of a selection scope, from the current entropy H
(no gradient):

    u_t   = log(max(H_t, 1e-8))
    med   = the `entropy_pivot` quantile of u (nearest rank, ties to even)
    h_t   = (u_t − med) / σ,        σ² = max(mean((u − med)²), 1e-8)
    ĥ_t   = h_t / max(h⁺) if h_t > 0 else h_t / |min(h⁻)|            ∈ [−1, 1]   (symmetric)
    ĥ_t   = |ĥ_t as above|                                              ∈ [0, 1]    (absolute)

`score_form='absolute'` is what the authors' code computes (it divides the negatives by the
negative minimum); `'symmetric'` is the paper's form. Then per token:

    asymmetric adaptive clipping:   ĥ > 0:  ε_h' = ε_h (1 + α ĥ),  ε_l' = ε_l
                                    ĥ ≤ 0:  ε_l' = ε_l (1 − α ĥ),  ε_h' = ε_h
    advantage redistribution:       Aᵉ = A (1 + β ĥ),  band = 1 − ε_l'/2 < sg(r) < 1 + ε_h'/2
                                    ĥ > 0:  A' = A inside the band, Aᵉ outside
                                    ĥ ≤ 0:  A' = Aᵉ inside the band, A outside
    L_t = the PPO loss with A', ε_l', ε_h' (and `loss.dual_clip_c`; the authors' scripts: 10)

The score is a scope statistic (`loss.selection_scope`; the authors' code takes it per
micro-batch). HAPO's adaptive sampling temperature is `hapo_temperature` (it reuses the score
with the statistics of the previous rollout); the token-level group advantage is
`hapo_token_advantage`.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_bool, check_choice, check_number
from entropix_rl.interventions import selection
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.ppo import importance_ratio, ppo_terms
from entropix_rl.interventions.registry import Intervention, SurrogateOutput

SCORE_FORMS = ("symmetric", "absolute")
SCORE_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class HAPOConfig:
  """Constants of HAPO's loss side (the authors' script values).

  Attributes:
    entropy_pivot: quantile in [0, 1] of log-entropy taken as the centre of ĥ (0.8).
    score_form: `symmetric` (the paper: ĥ ∈ [−1, 1]) or `absolute` (the authors' code:
      ĥ ∈ [0, 1], so every token takes the high-entropy rules).
    adaptive_clip: widen ε_h for high-entropy and ε_l for low-entropy tokens.
    clip_alpha: α ≥ 0, the clip widening scale (1.0).
    adaptive_advantage: redistribute the advantage by ĥ and the ratio band.
    adv_beta: β ≥ 0, the advantage redistribution scale (1.0).
  """

  entropy_pivot: float = 0.8
  score_form: str = "symmetric"
  adaptive_clip: bool = True
  clip_alpha: float = 1.0
  adaptive_advantage: bool = True
  adv_beta: float = 1.0

  def validate(self, path: str) -> None:
    check_number(f"{path}.entropy_pivot", self.entropy_pivot, low=0.0, high=1.0)
    check_choice(f"{path}.score_form", self.score_form, SCORE_FORMS)
    check_bool(f"{path}.adaptive_clip", self.adaptive_clip)
    check_number(f"{path}.clip_alpha", self.clip_alpha, low=0.0)
    check_bool(f"{path}.adaptive_advantage", self.adaptive_advantage)
    check_number(f"{path}.adv_beta", self.adv_beta, low=0.0)


def nearest_rank(quantile: float, n: jax.Array) -> jax.Array:
  """`round(q · (n − 1))` with ties to even (Python's `round`, the authors' `torch_quantile`
  "nearest"), exact for q read as the decimal fraction it was written as; 0 when n = 0.

  Args:
    quantile: q in [0, 1].
    n: int scalar, the number of values.

  Returns:
    int scalar, the rank in `[0, max(n − 1, 0)]`.
  """
  chex.assert_rank(n, 0)
  chex.assert_type(n, int)
  m = jnp.maximum(n - 1, 0)
  floor = selection.count_floor(quantile, m)
  twice_floor = selection.count_floor(quantile, 2 * m)
  tie = twice_floor == selection.count_ceil(quantile, 2 * m)
  up = (twice_floor - 2 * floor == 1) & (~tie | (floor % 2 == 1))
  return floor + up.astype(floor.dtype)


def score_statistics(entropy: jax.Array, mask: jax.Array, *, pivot: float) -> dict[str, jax.Array]:
  """The scope statistics of ĥ: centre `med`, scale `σ` and the positive and negative extremes
  of h, from the valid tokens of `entropy` (no gradient; module docstring).

  Args:
    entropy: `[rows, T]` per-token entropy H.
    mask: `[rows, T]` response mask.
    pivot: the quantile of log H used as centre.

  Returns:
    `{"centre", "scale", "top", "bottom"}`, float32 scalars.
  """
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, mask])
  valid = mask > 0
  u = jnp.log(jnp.maximum(jnp.where(valid, jax.lax.stop_gradient(entropy), 1.0), SCORE_EPS))
  n = valid.sum()
  ordered = jnp.sort(jnp.where(valid, u, jnp.inf).ravel())
  centre = jnp.where(n > 0, ordered[nearest_rank(pivot, n)], 0.0)
  h = jnp.where(valid, u - centre, 0.0)
  scale = jnp.sqrt(jnp.maximum(jnp.square(h).sum() / jnp.maximum(n, 1), SCORE_EPS))
  h = h / scale
  return {
      "centre": centre,
      "scale": scale,
      "top": jnp.maximum(jnp.where(valid & (h > 0), h, 0.0).max(), SCORE_EPS),
      "bottom": jnp.maximum(-jnp.where(valid & (h < 0), h, 0.0).min(), SCORE_EPS),
  }


def score_from_statistics(
    entropy: jax.Array, stats: dict[str, jax.Array], form: str = "symmetric"
) -> jax.Array:
  """ĥ of entropies under given statistics (`score_statistics`).

  Args:
    entropy: per-token entropies H, any shape (`[rows, T]` in the loss, `[R]` live rows when
      sampling).
    stats: `{"centre", "scale", "top", "bottom"}` scalars (other keys are ignored).
    form: one of `SCORE_FORMS`.

  Returns:
    ĥ, same shape as `entropy`.
  """
  chex.assert_rank([stats[k] for k in ("centre", "scale", "top", "bottom")], 0)
  check_choice("loss.hapo.score_form", form, SCORE_FORMS)
  h = (jnp.log(jnp.maximum(entropy, SCORE_EPS)) - stats["centre"]) / stats["scale"]
  negative = jnp.abs(h) if form == "absolute" else h
  return jnp.where(h > 0, h / stats["top"], negative / stats["bottom"])


def entropy_score(
    entropy: jax.Array, mask: jax.Array, *, pivot: float, form: str = "symmetric"
) -> jax.Array:
  """HAPO's normalised entropy score ĥ over one scope (module docstring).

  Args:
    entropy: `[rows, T]` per-token entropy H (no gradient is taken).
    mask: `[rows, T]` response mask; statistics use its valid tokens only.
    pivot: the quantile of log H used as centre.
    form: one of `SCORE_FORMS`.

  Returns:
    `[rows, T]` float32 ĥ, 0 at masked tokens.
  """
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, mask])
  stats = score_statistics(entropy, mask, pivot=pivot)
  score = score_from_statistics(jax.lax.stop_gradient(entropy), stats, form)
  return jnp.where(mask > 0, score, 0.0)


def adaptive_clip_range(
    score: jax.Array, *, clip_eps_low: float, clip_eps_high: float, alpha: float
) -> tuple[jax.Array, jax.Array]:
  """Per-token `(ε_l', ε_h')`: ε_h(1 + αĥ) where ĥ > 0, ε_l(1 − αĥ) where ĥ ≤ 0.

  Args:
    score: `[B, T]` ĥ.
    clip_eps_low, clip_eps_high: ε_l, ε_h.
    alpha: α.

  Returns:
    `(ε_l' [B, T], ε_h' [B, T])`.
  """
  chex.assert_rank(score, 2)
  eps_low = jnp.where(score <= 0, clip_eps_low * (1.0 - alpha * score), clip_eps_low)
  eps_high = jnp.where(score > 0, clip_eps_high * (1.0 + alpha * score), clip_eps_high)
  return eps_low, eps_high


def redistribute_advantages(
    advantages: jax.Array,
    score: jax.Array,
    ratio: jax.Array,
    eps_low: jax.Array,
    eps_high: jax.Array,
    *,
    beta: float,
) -> jax.Array:
  """HAPO's differential advantage redistribution (module docstring).

  Args:
    advantages: `[B, T]` advantages A.
    score: `[B, T]` ĥ.
    ratio: `[B, T]` current importance ratio r (its gradient is stopped here).
    eps_low, eps_high: `[B, T]` per-token ε_l', ε_h'.
    beta: β.

  Returns:
    `[B, T]` A'.
  """
  chex.assert_rank(advantages, 2)
  chex.assert_equal_shape([advantages, score, ratio, eps_low, eps_high])
  ratio = jax.lax.stop_gradient(ratio)
  scaled = advantages * (1.0 + beta * score)
  inside = (ratio > 1.0 - eps_low / 2) & (ratio < 1.0 + eps_high / 2)
  return jnp.where(
      score > 0, jnp.where(inside, advantages, scaled), jnp.where(inside, scaled, advantages)
  )


def hapo_stats(cfg: LossConfig, batch: TokenBatch, state: None, key: jax.Array | None) -> jax.Array:
  """The scope's ĥ (`[rows, T]`), from the current entropy (`[rows, T]`) without gradient."""
  del state, key
  c = cfg.hapo
  entropy = batch.require("entropy", "hapo")
  chex.assert_rank(batch.mask, 2)
  chex.assert_equal_shape([entropy, batch.mask])
  return entropy_score(entropy, batch.mask, pivot=c.entropy_pivot, form=c.score_form)


def hapo(cfg: LossConfig, batch: TokenBatch, score: jax.Array, state: None) -> SurrogateOutput:
  """HAPO surrogate (module docstring); `score` is the scope's ĥ, `[B, T]` as the batch fields.
  Picks nothing."""
  del state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  chex.assert_equal_shape([batch.logp, score])
  c = cfg.hapo
  valid = batch.mask > 0
  logp = jnp.where(valid, batch.logp, 0.0)
  old_logp = jnp.where(valid, batch.old_logp, 0.0)
  advantages = jnp.where(valid, batch.advantages, 0.0)
  score = jnp.where(valid, jax.lax.stop_gradient(score), 0.0)
  eps_low, eps_high = cfg.clip_eps_low, cfg.clip_eps_high
  if c.adaptive_clip:
    eps_low, eps_high = adaptive_clip_range(
        score, clip_eps_low=eps_low, clip_eps_high=eps_high, alpha=c.clip_alpha
    )
  if c.adaptive_advantage:
    advantages = redistribute_advantages(
        advantages,
        score,
        importance_ratio(logp, old_logp),
        jnp.broadcast_to(eps_low, score.shape),
        jnp.broadcast_to(eps_high, score.shape),
        beta=c.adv_beta,
    )
  terms = ppo_terms(
      logp,
      old_logp,
      advantages,
      clip_eps_low=eps_low,
      clip_eps_high=eps_high,
      dual_clip_c=cfg.dual_clip_c,
  )
  return SurrogateOutput.unpicked(terms.loss, batch.mask, terms.clipped)


INTERVENTION = Intervention(
    name="hapo",
    kind="surrogate",
    apply=hapo,
    config=HAPOConfig,
    needs=lambda cfg: frozenset({"entropy"}),
    scope_stats=hapo_stats,
)
