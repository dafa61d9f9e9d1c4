"""Entropy bonus, fixed (verl) or adaptive (Skywork-OR1); docs/interventions.md.

Regulariser: `L = L_pg − c · Agg(H_t)`, H the full-vocabulary entropy of the
temperature-scaled logits (differentiable through the whole softmax), aggregated with the
loss's own mode (verl). `aux["entropy_bonus"] = c · Agg(H)`, the amount subtracted.

Adaptive control (Skywork-OR1, He et al. 2025, arXiv 2505.22312; `EntController`): the
intervention state is the coefficient `c` and a flag; once per training step, after the actor
update (`after_update`), with Ĥ the rollout's mean sampled-token NLL `−mean(ℓ^old)` (not the
full entropy):

    c       ← clip(c + Δ if Ĥ < H_tgt else c − Δ, c_min, c_max)
    enabled ← Ĥ < H_tgt

and the next step uses `c · enabled` (`entropy_coefficient`). The flag starts True, so step 1 uses the initial `coef` (the release scripts
start at 0, where this does not matter). Release-script defaults: target 0.2, Δ 1e-4,
bounds [0, 0.005], initial 0.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_bool, check_number
from entropix_rl.interventions.aggregation import Aggregator, masked_mean
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention, RegulariserOutput


@dataclasses.dataclass(frozen=True)
class EntropyBonusConfig:
  """Entropy-bonus constants.

  Attributes:
    coef: fixed coefficient c (verl `entropy_coeff`, HEAD default 0), or the adaptive
      controller's initial value.
    adaptive: use the Skywork-OR1 controller.
    target: H_tgt, target sampled-token NLL (nats).
    delta: Δ, coefficient step per training step.
    min_coef: c_min.
    max_coef: c_max.
  """

  coef: float = 0.0
  adaptive: bool = False
  target: float = 0.2
  delta: float = 1e-4
  min_coef: float = 0.0
  max_coef: float = 0.005

  def validate(self, path: str) -> None:
    check_number(f"{path}.coef", self.coef)
    check_bool(f"{path}.adaptive", self.adaptive)
    check_number(f"{path}.target", self.target, low=0.0)
    check_number(f"{path}.delta", self.delta, low=0.0, low_open=True)
    check_number(f"{path}.min_coef", self.min_coef, low=0.0)
    check_number(
        f"{path}.max_coef",
        self.max_coef,
        low=self.min_coef,
        allowed=f"a number >= {path}.min_coef={self.min_coef}",
    )

  @property
  def active(self) -> bool:
    return self.adaptive or self.coef != 0


def init_entropy_controller(loss_cfg: LossConfig) -> dict:
  """Initial controller state: `{"coef": f32, "enabled": bool}` if adaptive, else `{}`."""
  cfg = loss_cfg.entropy_bonus
  if not cfg.adaptive:
    return {}
  return {"coef": jnp.float32(cfg.coef), "enabled": jnp.bool_(True)}


def update_entropy_controller(
    loss_cfg: LossConfig, state: dict, measured_entropy: jax.Array
) -> dict:
  """One Skywork-OR1 controller step (module docstring); `{}` passes through when not adaptive.

  Args:
    loss_cfg: the loss config.
    state: the controller state from `init_entropy_controller` or a previous update.
    measured_entropy: scalar Ĥ, the rollout's mean sampled-token NLL `−mean(ℓ^old)` (nats).

  Returns:
    The new state.
  """
  chex.assert_rank(measured_entropy, 0)
  cfg = loss_cfg.entropy_bonus
  if not cfg.adaptive:
    return state
  chex.assert_rank([state["coef"], state["enabled"]], 0)
  below = jnp.asarray(measured_entropy, jnp.float32) < cfg.target
  coef = state["coef"] + jnp.where(below, cfg.delta, -cfg.delta)
  return {"coef": jnp.clip(coef, cfg.min_coef, cfg.max_coef).astype(jnp.float32), "enabled": below}


def entropy_coefficient(loss_cfg: LossConfig, state: dict | None) -> jax.Array:
  """The bonus coefficient for this step: `coef · enabled` from a controller state, else the
  fixed `loss.entropy_bonus.coef`; a float32 scalar."""
  cfg = loss_cfg.entropy_bonus
  if not state:
    return jnp.float32(cfg.coef)
  chex.assert_rank([state["coef"], state["enabled"]], 0)
  return jnp.where(state["enabled"], state["coef"], 0.0).astype(jnp.float32)


def entropy_bonus(
    cfg: LossConfig, batch: TokenBatch, stats: None, state: dict | None, agg: Aggregator
) -> RegulariserOutput:
  """`−c · Agg(H)` with c = `entropy_coefficient(cfg, state)` (`entropy`, `mask` `[B, T]`)."""
  del stats
  entropy = batch.require("entropy", "entropy_bonus")
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, batch.mask])
  coef = entropy_coefficient(cfg, state)
  term = coef * agg(entropy, batch.mask)
  return RegulariserOutput(loss=-term, metric=term)


def _after_update(cfg: LossConfig, state: dict, rollout: TokenBatch) -> tuple[dict, dict]:
  """The adaptive controller's step on this rollout's sampled-token NLL."""
  if not cfg.entropy_bonus.adaptive:
    return state, {}
  nll = masked_mean(-rollout.old_logp, rollout.mask)
  state = update_entropy_controller(cfg, state, nll)
  return state, {"sampled_nll": nll, "next_coef": entropy_coefficient(cfg, state)}


INTERVENTION = Intervention(
    name="entropy_bonus",
    kind="regulariser",
    apply=entropy_bonus,
    config=EntropyBonusConfig,
    active=lambda cfg: cfg.entropy_bonus.active,
    needs=lambda cfg: frozenset({"entropy"}),
    grad_needs=lambda cfg: frozenset({"entropy"}),
    init_state=init_entropy_controller,
    after_update=_after_update,
)
