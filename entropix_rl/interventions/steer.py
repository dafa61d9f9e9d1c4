"""STEER: reweight each token's PPO loss by its estimated entropy change (Hao et al. 2025,
arXiv 2510.10150, "Rethinking Entropy Interventions in RLVR"; docs/interventions.md, STEER;
reference zz-haooo/STEER `compute_token_weights`, `compute_policy_loss_with_entropy`).

Per token, without gradient, with the current π and the OLD entropy:

    π_t   = clip(exp(ℓ_t), 1e-8, 1 − 1e-8),   πᵒˡᵈ_t = clip(exp(ℓᵒˡᵈ_t), 1e-8, 1)
    Ω_t   = (A_t / πᵒˡᵈ_t) · π_t(1 − π_t) · (log π_t + Hᵒˡᵈ_t)      (non-finite → 0)
    m_t   = |Ω_t|,   m_min, m_max over the valid tokens of the selection scope

    exp mode:     k = −ln λ_min / max(m_max, 0.02),   λ_t = clip(exp(−k·m_t), λ_min, 1)
    linear mode:  λ_t = clip(λ_max − (m_t − m_min)(λ_max − λ_min)/(m_max − m_min), λ_min, λ_max)
                  (λ_t = (λ_min + λ_max)/2 when m_max = m_min)

    L_t = sg(λ_t) · Lᵖᵖᵒ_t          (the configured PPO loss, dual-clip when `dual_clip_c` is set)

The weights are computed in float32 whatever the input dtype. In exp mode λ_min is
reached only when m_max ≥ 0.02 (the floor in k). `log π_t` is the log of the clipped π_t, as
the reference. The log-ratio is clamped to ±20 before exp, as the reference's PPO loss (and
`ppo_terms`). m_min and m_max are the scope statistics (`scope_stats`), so with gradient
accumulation they are those of the whole scope; each micro-batch recomputes λ from its
current ℓ and the scope's m_min, m_max.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_choice, check_number
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.ppo import ppo_terms_from_config
from entropix_rl.interventions.registry import Intervention, SurrogateOutput

MODES = ("exp", "linear")
EXP_SCALE_FLOOR = 0.02  # k = −ln λ_min / max(m_max, 0.02) in the reference


@dataclasses.dataclass(frozen=True)
class SteerConfig:
  """STEER constants (reference `token_weight_min`, `token_weight_max`, `linear`).

  Defaults are `run/run_exp.sh`: exp mode with λ_min 0.8 (λ_max is passed as 1.0 there and
  unused in exp mode); `run/run_linear.sh` uses linear mode with 0.8 / 1.2. The reference's
  function defaults (linear 0.8/1.2) and its actor fallbacks (0.95/1.05) differ, so the
  scripts' values are the ones to compare against.

  Attributes:
    mode: "exp" (λ = exp(−k|Ω|), the paper's form) or "linear" (min-max map onto
      [λ_min, λ_max]).
    lambda_min: λ_min, the smallest weight; in (0, 1] for exp mode.
    lambda_max: λ_max ≥ λ_min, the largest weight in linear mode (unused in exp mode,
      whose weights are at most 1).
  """

  mode: str = "exp"
  lambda_min: float = 0.8
  lambda_max: float = 1.0

  def validate(self, path: str) -> None:
    check_choice(f"{path}.mode", self.mode, MODES)
    check_number(
        f"{path}.lambda_min",
        self.lambda_min,
        low=0.0,
        low_open=True,
        high=1.0 if self.mode == "exp" else None,
    )
    check_number(
        f"{path}.lambda_max",
        self.lambda_max,
        low=self.lambda_min,
        allowed=f"a number >= {path}.lambda_min={self.lambda_min}",
    )


def entropy_change_magnitude(
    logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, old_entropy: jax.Array
) -> jax.Array:
  """m_t = |Ω_t| (module docstring), without gradient.

  Args:
    logp: `[B, T]` current log-probs ℓ.
    old_logp: `[B, T]` behaviour log-probs ℓᵒˡᵈ.
    advantages: `[B, T]` advantages A.
    old_entropy: `[B, T]` behaviour-policy entropies Hᵒˡᵈ.

  Returns:
    `[B, T]` float32 m_t.
  """
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, old_logp, advantages, old_entropy])
  sg = jax.lax.stop_gradient
  f32 = lambda x: sg(jnp.asarray(x, jnp.float32))
  logp, old_logp, advantages, old_entropy = map(f32, (logp, old_logp, advantages, old_entropy))
  prob = jnp.clip(jnp.exp(logp), 1e-8, 1.0 - 1e-8)
  old_prob = jnp.clip(jnp.exp(old_logp), 1e-8, 1.0)
  omega = advantages / old_prob * prob * (1.0 - prob) * (jnp.log(prob) + old_entropy)
  return jnp.abs(jnp.where(jnp.isfinite(omega), omega, 0.0))


def magnitude_range(magnitude: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(m_min, m_max) over the valid tokens of `[B, T]` `magnitude` and `mask`, scalars; (0, 0)
  when none is valid."""
  chex.assert_rank(magnitude, 2)
  chex.assert_equal_shape([magnitude, mask])
  valid = mask > 0
  any_valid = valid.any()
  m_min = jnp.where(any_valid, jnp.min(jnp.where(valid, magnitude, jnp.inf)), 0.0)
  m_max = jnp.where(any_valid, jnp.max(jnp.where(valid, magnitude, -jnp.inf)), 0.0)
  return m_min, m_max


def weights_from_magnitude(
    magnitude: jax.Array,
    mask: jax.Array,
    m_min: jax.Array,
    m_max: jax.Array,
    *,
    mode: str,
    lambda_min: float,
    lambda_max: float,
) -> jax.Array:
  """λ_t from m_t and the scope's (m_min, m_max) (module docstring); 0 where `mask` is 0.

  Args:
    magnitude: `[B, T]` m_t.
    mask: `[B, T]` response mask.
    m_min, m_max: the scope's extremes, scalars or `[B, 1]` (one per row), broadcast over
      `magnitude`.
    mode, lambda_min, lambda_max: see `SteerConfig`.

  Returns:
    `[B, T]` float32 λ_t.
  """
  chex.assert_rank(magnitude, 2)
  chex.assert_equal_shape([magnitude, mask])
  chex.assert_equal(jnp.shape(m_min), jnp.shape(m_max))
  chex.assert_is_broadcastable(jnp.shape(m_min), magnitude.shape)
  if mode == "exp":
    k = -jnp.log(jnp.float32(lambda_min)) / jnp.maximum(m_max, EXP_SCALE_FLOOR)
    weights = jnp.clip(jnp.exp(-k * magnitude), lambda_min, 1.0)
  else:
    spread = m_max - m_min
    scale = (lambda_max - lambda_min) / jnp.where(spread > 0, spread, 1.0)
    weights = jnp.where(
        spread > 0, lambda_max - (magnitude - m_min) * scale, 0.5 * (lambda_min + lambda_max)
    )
    weights = jnp.clip(weights, lambda_min, lambda_max)
  return jnp.where(mask > 0, weights, 0.0).astype(jnp.float32)


def _magnitude(batch: TokenBatch) -> jax.Array:
  return entropy_change_magnitude(
      batch.logp, batch.old_logp, batch.advantages, batch.require("old_entropy", "steer")
  )


def steer_stats(
    cfg: LossConfig, batch: TokenBatch, state: None, key: jax.Array | None
) -> dict[str, jax.Array]:
  """The scope's `{"m_min", "m_max"}`, each broadcast to `[rows]`, from the `[rows, T]` fields
  `logp`, `old_logp`, `advantages`, `old_entropy` and `mask`."""
  del cfg, state, key
  old_entropy = batch.require("old_entropy", "steer")
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask, old_entropy])
  m_min, m_max = magnitude_range(_magnitude(batch), batch.mask)
  rows = batch.mask.shape[0]
  return {"m_min": jnp.broadcast_to(m_min, (rows,)), "m_max": jnp.broadcast_to(m_max, (rows,))}


def steer_weights(cfg: LossConfig, batch: TokenBatch, stats: dict[str, jax.Array]) -> jax.Array:
  """λ `[B, T]` (float32, no gradient) from the batch's current ℓ and the scope statistics
  (`{"m_min", "m_max"}`, `[B]` each)."""
  old_entropy = batch.require("old_entropy", "steer")
  chex.assert_rank([batch.logp, stats["m_min"]], [2, 1])
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask, old_entropy])
  chex.assert_equal_shape([stats["m_min"], stats["m_max"]])
  chex.assert_equal_shape_prefix([batch.logp, stats["m_min"]], 1)
  c = cfg.steer
  # Every row of a scope holds the same statistics; rows are sliced per micro-batch.
  m_min, m_max = stats["m_min"][:, None], stats["m_max"][:, None]
  return jax.lax.stop_gradient(
      weights_from_magnitude(
          _magnitude(batch),
          batch.mask,
          m_min,
          m_max,
          mode=c.mode,
          lambda_min=c.lambda_min,
          lambda_max=c.lambda_max,
      )
  )


def steer(
    cfg: LossConfig, batch: TokenBatch, stats: dict[str, jax.Array], state: None
) -> SurrogateOutput:
  """STEER surrogate (module docstring): `λ · Lᵖᵖᵒ` over the `[B, T]` batch fields; picks
  nothing."""
  del state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  terms = ppo_terms_from_config(cfg, batch)
  return SurrogateOutput.unpicked(
      steer_weights(cfg, batch, stats) * terms.loss, batch.mask, terms.clipped
  )


INTERVENTION = Intervention(
    name="steer",
    kind="surrogate",
    apply=steer,
    config=SteerConfig,
    needs=lambda cfg: frozenset({"old_entropy"}),
    scope_stats=steer_stats,
)
