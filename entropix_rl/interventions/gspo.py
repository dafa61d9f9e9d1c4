"""GSPO: sequence-level importance ratio and clipping (Zheng et al. 2025, "Group Sequence Policy
Optimization", arXiv 2507.18071), in its GSPO-token form.

For response i with valid tokens V_i (|V_i| = Σ_t m):

    log s_i = (1/|V_i|) Σ_{t∈V_i} (ℓ_t − ℓᵒˡᵈ_t)                     (length-normalised)
    s_i,t   = sg(s_i) · π_t / sg(π_t) = sg(s_i) · exp(ℓ_t − sg(ℓ_t))   (GSPO-token)
    L_t     = max(−A_t · s_i,t,  −A_t · clip(s_i,t, 1 − ε_l, 1 + ε_h))

Every token of a response has the value s_i, so a response is clipped as a whole; unclipped
tokens get the gradient `−A_t · s_i · ∇ℓ_t`. Aggregated with `seq-mean-token-mean` and a
sequence advantage A_t = A_i, the loss and its gradient are GSPO's sequence objective
`(1/G) Σ_i max(−A_i s_i, −A_i clip(s_i, 1 − ε_l, 1 + ε_h))`, whose gradient on unclipped
responses is `−(1/G) Σ_i A_i s_i (1/|V_i|) Σ_t ∇ℓ_t`. The other `loss.agg` modes
weight the same per-token terms differently (token-mean: by response length).

ε_l, ε_h are GSPO's own fields (paper §5.1: 3e-4, 4e-4); `loss.clip_eps_*` and
`loss.dual_clip_c` are not used. The sequence log-ratio is clamped to [−20, 20] before exp (as
the PPO ratio here); the clamp changes the value only, the gradient factor `exp(ℓ − sg(ℓ))`
is unaffected.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_number
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.ppo import LOG_RATIO_CLAMP
from entropix_rl.interventions.registry import Intervention, SurrogateOutput


@dataclasses.dataclass(frozen=True)
class GSPOConfig:
  """GSPO's sequence-level clip range (paper §5.1).

  Attributes:
    clip_eps_low: ε_l in [0, 1]; s_i is clipped below at 1 − ε_l (3e-4).
    clip_eps_high: ε_h ≥ 0; s_i is clipped above at 1 + ε_h (4e-4).
  """

  clip_eps_low: float = 3e-4
  clip_eps_high: float = 4e-4

  def validate(self, path: str) -> None:
    check_number(f"{path}.clip_eps_low", self.clip_eps_low, low=0.0, high=1.0)
    check_number(f"{path}.clip_eps_high", self.clip_eps_high, low=0.0)


def sequence_log_ratio(logp: jax.Array, old_logp: jax.Array, mask: jax.Array) -> jax.Array:
  """`log s_i = Σ_t m·(ℓ − ℓᵒˡᵈ) / max(Σ_t m, 1)` (0 for a response without tokens).

  Masked tokens never enter, even when their values are not finite.

  Args:
    logp: `[B, T]` current log-probs ℓ.
    old_logp: `[B, T]` behaviour log-probs ℓᵒˡᵈ.
    mask: `[B, T]` response mask.

  Returns:
    `[B]` log s_i.
  """
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, old_logp, mask])
  valid = mask > 0
  log_ratio = jnp.where(valid, logp - old_logp, 0.0)
  return log_ratio.sum(axis=-1) / jnp.maximum(valid.sum(axis=-1), 1).astype(jnp.float32)


def gspo_token_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The GSPO-token loss (module docstring).

  Args:
    logp: `[B, T]` current log-probs ℓ (differentiable).
    old_logp: `[B, T]` behaviour log-probs ℓᵒˡᵈ.
    advantages: `[B, T]` advantages A (treated as constants).
    mask: `[B, T]` response mask; s_i averages over its valid tokens.
    clip_eps_low: ε_l.
    clip_eps_high: ε_h.

  Returns:
    `(loss [B, T], clipped [B, T] bool, s [B])`: the per-token loss, the tokens whose
    response's clip bound is active, and the sequence ratio s_i (no gradient).
  """
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, old_logp, advantages, mask])
  valid = mask > 0
  logp = jnp.where(valid, logp, 0.0)
  advantages = jax.lax.stop_gradient(jnp.where(valid, advantages, 0.0))
  seq_ratio = jnp.exp(
      jnp.clip(
          jax.lax.stop_gradient(sequence_log_ratio(logp, old_logp, mask)),
          -LOG_RATIO_CLAMP,
          LOG_RATIO_CLAMP,
      )
  )
  token_ratio = seq_ratio[:, None] * jnp.exp(logp - jax.lax.stop_gradient(logp))
  l1 = -advantages * token_ratio
  l2 = -advantages * jnp.clip(token_ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
  return jnp.maximum(l1, l2), l2 > l1, seq_ratio


def gspo(cfg: LossConfig, batch: TokenBatch, stats: None, state: None) -> SurrogateOutput:
  """GSPO-token surrogate over all valid tokens (`[B, T]` batch fields); picks nothing."""
  del stats, state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  c = cfg.gspo
  loss, clipped, _ = gspo_token_loss(
      batch.logp,
      batch.old_logp,
      batch.advantages,
      batch.mask,
      clip_eps_low=c.clip_eps_low,
      clip_eps_high=c.clip_eps_high,
  )
  return SurrogateOutput.unpicked(loss, batch.mask, clipped)


INTERVENTION = Intervention(name="gspo", kind="surrogate", apply=gspo, config=GSPOConfig)
