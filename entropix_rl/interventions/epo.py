"""EPO, entropy-regularised policy optimisation (Xu et al. 2025, arXiv 2509.22576).

A regulariser: an entropy bonus plus a smoothing term that penalises token entropy outside a
band around the historical mean entropy H̄_j of the same turn (step) index j:

    P_t = relu(r_min·H̄_{j(t)} − H_t) + relu(H_t − r_max·H̄_{j(t)})
    L  += −c_H · Agg(H) + c_H · c_smooth · w · Agg(P)

H is the current entropy (differentiable), H̄ a constant from the intervention state, w the
optional phase weight, Agg the loss's own aggregation. `aux["epo"]` is Agg(P).

**The differentiable penalty is our choice.** In the authors' code (WujiangXu/EPO @ 5b6fa98,
`verl/workers/actor/dp_actor.py`, `generate_entropy_penalty`) the penalty is a constant
(`out_range_penalty` 0.1 outside the band, 0 inside) chosen by a comparison, so it carries no
gradient and EPO trains exactly like a plain entropy bonus. The relu distance above keeps the
band's intent (push H back into the band) with a gradient; `out_range_penalty` has no role.

History (state): per turn index j < `max_turns` (later turns share the last slot), the sum and
count of per-update token-mean old entropies, H̄_j = sum_j / count_j, i.e. an unweighted mean
over the updates in which turn j appeared (the authors' `entropy_history`, averaged over
training steps). As in the authors' trainer, the history includes the current rollout by
default (updated before the optimizer steps); `history_includes_current=False` updates it after
them instead. A turn index without history gets no smoothing (P = 0), so with
`history_includes_current=False` the first update is a plain entropy bonus. Responses without
a step delimiter are one turn (index 0).

Phase weight (`phase_updates` = E > 0; the authors' `enable_smooth_weights` with E = 150
epochs hard-coded), with u the number of completed updates clamped to [0, E] and h = E // 2:

    w = 1 − 0.2·(1 − exp(−2u/h))        u ≤ h   (1 → ≈0.83)
    w = 0.8·exp(−3(u − h)/(E − h))      u > h   (0.8 → ≈0.04)

Defaults are the release script's (`examples/general_running_server.sh`): c_H 0.001,
c_smooth 1.0, band [0.5, 1.5] (the code's own defaults are [0.8, 1.2]).
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


def _check_int(path: str, value, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{path}={value!r}; allowed: an int >= {low}")


@dataclasses.dataclass(frozen=True)
class EPOConfig:
  """Constants of EPO.

  Attributes:
    enabled: add the EPO regulariser.
    coef: c_H ≥ 0, the entropy coefficient (verl `entropy_coeff`).
    smooth_coef: c_smooth ≥ 0, the smoothing term's weight (`entropy_smooth_coeff`).
    min_ratio: r_min ≥ 0, the band's lower edge as a fraction of H̄.
    max_ratio: r_max ≥ r_min, the band's upper edge.
    max_turns: turn slots in the history; later turns share the last one.
    history_includes_current: update the history before the optimizer steps (as the authors'
      trainer), else after them.
    phase_updates: E, the phase weight's horizon in updates; 0 = no phase weight.
  """

  enabled: bool = False
  coef: float = 0.001
  smooth_coef: float = 1.0
  min_ratio: float = 0.5
  max_ratio: float = 1.5
  max_turns: int = 16
  history_includes_current: bool = True
  phase_updates: int = 0

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_number(f"{path}.coef", self.coef, low=0.0)
    check_number(f"{path}.smooth_coef", self.smooth_coef, low=0.0)
    check_number(f"{path}.min_ratio", self.min_ratio, low=0.0)
    check_number(
        f"{path}.max_ratio",
        self.max_ratio,
        low=self.min_ratio,
        allowed=f"a number >= {path}.min_ratio={self.min_ratio}",
    )
    _check_int(f"{path}.max_turns", self.max_turns, 1)
    check_bool(f"{path}.history_includes_current", self.history_includes_current)
    _check_int(f"{path}.phase_updates", self.phase_updates, 0)


def init_history(cfg: LossConfig) -> dict:
  """The empty history: `{"sum", "count"}` `[max_turns]` float32 and `"updates"` int32."""
  turns = cfg.epo.max_turns
  return {
      "sum": jnp.zeros(turns, jnp.float32),
      "count": jnp.zeros(turns, jnp.float32),
      "updates": jnp.zeros((), jnp.int32),
  }


def turn_index(step_ids: jax.Array, max_turns: int) -> jax.Array:
  """The history slot of each token: its step index, capped at `max_turns − 1`.

  Args:
    step_ids: `[B, T]` int step index of each token.
    max_turns: history slots.

  Returns:
    `[B, T]` int slots in `[0, max_turns)`.
  """
  chex.assert_rank(step_ids, 2)
  chex.assert_type(step_ids, int)
  return jnp.clip(step_ids, 0, max_turns - 1)


def turn_mean_entropy(
    entropy: jax.Array, mask: jax.Array, step_ids: jax.Array, max_turns: int
) -> tuple[jax.Array, jax.Array]:
  """Token-mean entropy of each turn slot over the batch.

  Args:
    entropy: `[B, T]` token entropies; mask: `[B, T]`; step_ids: `[B, T]` int.
    max_turns: history slots.

  Returns:
    `(mean [max_turns], present [max_turns] bool)`; a slot is present when it holds a valid
    token.
  """
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, mask, step_ids])
  mask = jnp.asarray(mask, jnp.float32)
  slot = turn_index(step_ids, max_turns).ravel()
  total = jax.ops.segment_sum(
      (jnp.where(mask > 0, entropy, 0.0) * mask).ravel(), slot, num_segments=max_turns
  )
  count = jax.ops.segment_sum(mask.ravel(), slot, num_segments=max_turns)
  return total / jnp.maximum(count, 1.0), count > 0


def historical_mean(state: dict) -> tuple[jax.Array, jax.Array]:
  """`(H̄ [max_turns], has_history [max_turns] bool)` from the state (`"sum"`, `"count"`
  `[max_turns]`)."""
  chex.assert_rank(state["sum"], 1)
  chex.assert_equal_shape([state["sum"], state["count"]])
  return state["sum"] / jnp.maximum(state["count"], 1.0), state["count"] > 0


def band_penalty(
    entropy: jax.Array, reference: jax.Array, *, min_ratio: float, max_ratio: float
) -> jax.Array:
  """`relu(r_min·H̄ − H) + relu(H − r_max·H̄)`, differentiable in H (H̄ is constant).

  Args:
    entropy: `[B, T]` current entropies H.
    reference: `[B, T]` each token's historical mean H̄ of its turn.
    min_ratio, max_ratio: r_min, r_max.

  Returns:
    `[B, T]` P.
  """
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, reference])
  reference = jax.lax.stop_gradient(reference)
  return jax.nn.relu(min_ratio * reference - entropy) + jax.nn.relu(entropy - max_ratio * reference)


def phase_weight(updates: jax.Array, horizon: int) -> jax.Array:
  """The authors' smoothing weight after `updates` completed updates (module docstring).

  Args:
    updates: int scalar u.
    horizon: E; 0 = no phase weight.

  Returns:
    float32 scalar w.
  """
  chex.assert_rank(updates, 0)
  if horizon <= 0:
    return jnp.float32(1.0)
  u = jnp.clip(jnp.asarray(updates, jnp.float32), 0.0, float(horizon))
  half = horizon // 2
  first = 1.0 - 0.2 * (1.0 - jnp.exp(-2.0 * u / max(half, 1)))
  second = 0.8 * jnp.exp(-3.0 * (u - half) / (horizon - half))
  return jnp.where(u <= half, first, second).astype(jnp.float32)


def epo(
    cfg: LossConfig, batch: TokenBatch, stats: None, state: dict, agg: Aggregator
) -> RegulariserOutput:
  """`−c_H·Agg(H) + c_H·c_smooth·w·Agg(P)`; metric Agg(P) (module docstring). Reads the
  `[B, T]` `entropy`, `step_ids` and `mask`."""
  del stats
  c = cfg.epo
  entropy = batch.require("entropy", "epo")
  step_ids = batch.require("step_ids", "epo")
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, step_ids, batch.mask])
  slot = turn_index(step_ids, c.max_turns)
  reference, has_history = historical_mean(state)
  penalty = (
      band_penalty(entropy, reference[slot], min_ratio=c.min_ratio, max_ratio=c.max_ratio)
      * has_history[slot]
  )
  smooth = agg(penalty, batch.mask)
  weight = phase_weight(state["updates"], c.phase_updates)
  loss = -c.coef * agg(entropy, batch.mask) + c.coef * c.smooth_coef * weight * smooth
  return RegulariserOutput(loss=loss, metric=smooth)


def _record(cfg: LossConfig, state: dict, rollout: TokenBatch) -> tuple[dict, dict]:
  """Adds this rollout's per-turn old-entropy means to the history."""
  mean, present = turn_mean_entropy(
      rollout.require("old_entropy", "epo"),
      rollout.mask,
      rollout.require("step_ids", "epo"),
      cfg.epo.max_turns,
  )
  state = dict(
      state, sum=state["sum"] + jnp.where(present, mean, 0.0), count=state["count"] + present
  )
  reference, has_history = historical_mean(state)
  return state, {"history_turn0": reference[0], "history_mean": masked_mean(reference, has_history)}


def _before_update(cfg: LossConfig, state: dict, rollout: TokenBatch) -> tuple[dict, dict]:
  if not cfg.epo.history_includes_current:
    return state, {}
  return _record(cfg, state, rollout)


def _after_update(cfg: LossConfig, state: dict, rollout: TokenBatch) -> tuple[dict, dict]:
  metrics = {"phase_weight": phase_weight(state["updates"], cfg.epo.phase_updates)}
  if not cfg.epo.history_includes_current:
    state, recorded = _record(cfg, state, rollout)
    metrics.update(recorded)
  return dict(state, updates=state["updates"] + 1), metrics


_NEEDS = frozenset({"entropy", "old_entropy", "step_ids"})

INTERVENTION = Intervention(
    name="epo",
    kind="regulariser",
    apply=epo,
    config=EPOConfig,
    active=lambda cfg: cfg.epo.enabled,
    needs=lambda cfg: _NEEDS,
    grad_needs=lambda cfg: frozenset({"entropy"}),
    init_state=init_history,
    before_update=_before_update,
    after_update=_after_update,
)
