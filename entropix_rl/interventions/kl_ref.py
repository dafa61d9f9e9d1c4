"""KL to a reference policy: per-token estimators and the `kl_ref` regulariser.

Per-token estimators of KL(π_θ ‖ π_ref) at the sampled token, `δ = ℓ − ℓ^ref` (verl
`kl_penalty`; Schulman 2020, "Approximating KL divergence"):

    k1  = δ
    k2  = ½ δ²
    k3  = clip(exp(−δ') + δ' − 1, −10, 10),  δ' = clip(δ, −20, 20)   ("low_var_kl")
    abs = |δ|

Regulariser: `L += β_ref · Agg(k(ℓ, ℓ^ref))` with the loss's aggregation mode (verl's
`use_kl_loss`), composed only with `coef > 0`. `aux["kl_ref"]` is `Agg(k)` whenever `ref_logp`
is given (`compose.compute_loss` logs it as a diagnostic), so the KL is logged with `coef = 0`
too.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_choice, check_number
from entropix_rl.interventions.aggregation import Aggregator
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention, RegulariserOutput

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


def kl_estimate(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
  """Per-token KL(π ‖ π_ref) estimate (module docstring).

  Args:
    logp: current log-probs ℓ, any shape (`[B, T]` in the loss).
    ref_logp: reference log-probs ℓ^ref, the shape of `logp`.
    estimator: one of `KL_ESTIMATORS`.

  Returns:
    The estimate, the shape of `logp`.
  """
  chex.assert_equal_shape([logp, ref_logp])
  delta = logp - ref_logp
  if estimator == "k1":
    return delta
  if estimator == "k2":
    return 0.5 * jnp.square(delta)
  if estimator == "k3":
    log_ratio = jnp.clip(-delta, -20.0, 20.0)
    return jnp.clip(jnp.exp(log_ratio) - log_ratio - 1.0, -10.0, 10.0)
  if estimator == "abs":
    return jnp.abs(delta)
  raise ValueError(f"loss.kl_ref.estimator={estimator!r}; allowed: {KL_ESTIMATORS}")


@dataclasses.dataclass(frozen=True)
class KLRefConfig:
  """KL-to-reference loss constants.

  Attributes:
    coef: β_ref ≥ 0 (0 = no loss term; verl `kl_loss_coef`).
    estimator: one of `KL_ESTIMATORS` (verl `kl_loss_type`; k3 = `low_var_kl`).
  """

  coef: float = 0.0
  estimator: str = "k3"

  def validate(self, path: str) -> None:
    check_number(f"{path}.coef", self.coef, low=0.0)
    check_choice(f"{path}.estimator", self.estimator, KL_ESTIMATORS)


def kl_ref(
    cfg: LossConfig, batch: TokenBatch, stats: None, state: None, agg: Aggregator
) -> RegulariserOutput:
  """`β_ref · Agg(k(ℓ, ℓ^ref))`; metric `Agg(k)` (`logp`, `ref_logp`, `mask` `[B, T]`)."""
  del stats, state
  c = cfg.kl_ref
  if batch.ref_logp is None:
    raise ValueError(
        f"loss.kl_ref.coef={c.coef} needs ref_logp= in policy_loss (rl.use_reference=True in "
        "training)"
    )
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.ref_logp, batch.mask])
  kl = agg(kl_estimate(batch.logp, batch.ref_logp, c.estimator), batch.mask)
  return RegulariserOutput(loss=c.coef * kl, metric=kl)


INTERVENTION = Intervention(
    name="kl_ref",
    kind="regulariser",
    apply=kl_ref,
    config=KLRefConfig,
    active=lambda cfg: cfg.kl_ref.coef > 0,
    needs=lambda cfg: frozenset({"ref_logp"}),
)
