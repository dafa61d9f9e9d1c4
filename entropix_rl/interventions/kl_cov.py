"""KL-Cov: penalise the log-ratio of the highest-covariance tokens (Cui et al. 2025,
arXiv 2505.22617, Eq. 14; docs/interventions.md; verl `compute_policy_loss_kl_cov`).

With the centred covariance `c_t = (A_t − Ā)(ℓ_t − ℓ̄)` over the valid tokens of the scope:

    I_KL = the k = max(1, floor(ρ·N)) valid tokens with the largest c_t
    L_t  = −A_t·r_t + β·|ℓ_t − ℓ^old_t|·1[t ∈ I_KL]

No PPO clipping at all (`clip_eps_*` and `dual_clip_c` are unused, as in the reference). The
penalty is the absolute log-ratio (verl's "abs" estimator), not the paper's KL.

On-policy inertness (a pinned decision, docs/design.md): on the first mini-batch after a rollout,
`ℓ = ℓ^old` exactly, so `|ℓ − ℓ^old| = 0` with zero (sub)gradient (`d|x|/dx = sign(0) = 0`):
the loss, its gradient and the pick's effect are those of plain `−A·r`. The penalty acts only
on later mini-batches/epochs. `old_logp` is recomputed in a separate forward pass, which on a
sharded mesh differs from `logp` by float32 round-off (~1e-7); since the subgradient of |x|
jumps from 0 to ±β there, log-ratios with |ℓ − ℓ^old| <= `ON_POLICY_TOL` count as exactly
on-policy (no penalty, zero gradient). This keeps the result independent of the device layout.
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
from entropix_rl.interventions.ppo import importance_ratio
from entropix_rl.interventions.registry import Intervention, SurrogateOutput

ON_POLICY_TOL = 1e-5  # nats; far above float32 round-off, far below a real update's movement


@dataclasses.dataclass(frozen=True)
class KLCovConfig:
  """KL-Cov constants (verl `kl_cov_ratio`, `ppo_kl_coef`).

  Attributes:
    ratio: ρ_kl, fraction of the scope's valid tokens to penalise (2e-3 for Qwen2.5-7B,
      2e-4 for 32B; the original repo's `k_percent` is in percent).
    coef: β, weight of the |log-ratio| penalty (recipes pass 1; verl's yaml default 0.1).
  """

  ratio: float = 2e-3
  coef: float = 1.0

  def validate(self, path: str) -> None:
    check_ratio(f"{path}.ratio", self.ratio)
    check_number(f"{path}.coef", self.coef, low=0.0)


def kl_cov_pick(
    logp: jax.Array, advantages: jax.Array, mask: jax.Array, *, ratio: float
) -> jax.Array:
  """The top-k covariance pick within one scope chunk (`[rows, T]` in, bool `[rows, T]` out)."""
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, advantages, mask])
  valid = mask > 0
  cov = dynamics.token_covariance(logp, advantages, mask)
  k = jnp.maximum(1, selection.count_floor(ratio, valid.sum()))
  k_max = max(1, selection.count_floor(ratio, mask.size))
  return selection.top_k_mask(cov.ravel(), valid.ravel(), k, k_max).reshape(mask.shape)


def kl_cov_stats(
    cfg: LossConfig, batch: TokenBatch, state: None, key: jax.Array | None
) -> jax.Array:
  """The scope's pick I_KL (`[rows, T]` bool), from the current ℓ without gradient."""
  del state, key
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.advantages, batch.mask])
  return kl_cov_pick(batch.logp, batch.advantages, batch.mask, ratio=cfg.kl_cov.ratio)


def kl_cov(cfg: LossConfig, batch: TokenBatch, selected: jax.Array, state: None) -> SurrogateOutput:
  """KL-Cov surrogate (module docstring); `selected` is the penalised set I_KL, `[B, T]` bool as
  the batch fields."""
  del state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  chex.assert_equal_shape([batch.logp, selected])
  chex.assert_type(selected, bool)
  pg = -batch.advantages * importance_ratio(batch.logp, batch.old_logp)
  log_ratio = batch.logp - batch.old_logp
  penalty = cfg.kl_cov.coef * jnp.where(jnp.abs(log_ratio) > ON_POLICY_TOL, jnp.abs(log_ratio), 0.0)
  return SurrogateOutput(
      per_token_loss=pg + jnp.where(selected, penalty, 0.0),
      loss_mask=batch.mask,
      selected=selected,
      clipped=jnp.zeros(batch.mask.shape, bool),
  )


INTERVENTION = Intervention(
    name="kl_cov", kind="surrogate", apply=kl_cov, config=KLCovConfig, scope_stats=kl_cov_stats
)
