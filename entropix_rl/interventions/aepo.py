"""AEPO: arbitrary entropy policy optimisation (Wang et al. 2025, arXiv 2510.08141;
597358816/AEPO @ b353a05, the AEPO branch of `verl/trainer/ray_trainer.py`).

Entropy is held near a target by the temperature of a one-sided REINFORCE regulariser:

    T   = T_high if Ĥ < H_target else T_low        Ĥ: the previous step's sampled-token NLL
    ∇J  = ∇J_GRPO + α · E_{q, o ~ π^T}[ ∇ log π(o|q) · R(q, o) ]

Implementation (as the reference, but with an explicit α on a token-level REINFORCE term, where
the reference's α is implicit; docs/interventions.md, AEPO):

* rollout: for the first quarter of the step's prompts, sample `group_size` responses at T,
  compute their GRPO advantages, keep those with advantage > 0.05 and put up to
  `num_reinforce` of them (half as many when Ĥ > H_target) in place of the first rows of the
  regular batch, marked `info["aepo_reinforce"]`; as in the reference the replaced regular
  rows are dropped and the batch size stays the same;
* advantage: marked rows get advantage 0 in the GRPO term, and the GRPO statistics of the rest
  are taken without them;
* regulariser: `α · Agg(−ℓ, m ⊙ marked)`, REINFORCE with advantage 1 on the marked rows;
* state: Ĥ, the mean of −ℓᵒˡᵈ over the rollout (0 at the start, so step 1 samples at T_high).

The reference makes α implicit (the replaced rows enter the clipped GRPO loss with advantage
1, ≈ S / batch size); here it is a field.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

from entropix_rl import advantages as advantages_lib
from entropix_rl.checks import check_bool, check_number
from entropix_rl.interventions.aggregation import Aggregator, masked_mean
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention, RegulariserOutput

FLAG = "aepo_reinforce"


@dataclasses.dataclass(frozen=True)
class AEPOConfig:
  """AEPO constants (example script: T_high 1.2, T_low 0.8, H_target 0.5, S 60).

  Attributes:
    enabled: use AEPO.
    target: H_target, the sampled-token NLL (nats) that switches the temperature.
    temperature_high, temperature_low: T_high, T_low.
    num_reinforce: S, most REINFORCE responses per step (scaled to the batch).
    coef: α, the REINFORCE regulariser's coefficient.
    min_advantage: responses at T with a GRPO advantage above it are kept (0.05).
  """

  enabled: bool = False
  target: float = 0.5
  temperature_high: float = 1.2
  temperature_low: float = 0.8
  num_reinforce: int = 16
  coef: float = 0.1
  min_advantage: float = 0.05

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_number(f"{path}.target", self.target, low=0.0)
    for name in ("temperature_high", "temperature_low"):
      check_number(f"{path}.{name}", getattr(self, name), low=0.0, low_open=True)
    check_number(f"{path}.num_reinforce", self.num_reinforce, low=0)
    check_number(f"{path}.coef", self.coef, low=0.0)
    check_number(f"{path}.min_advantage", self.min_advantage)


def aepo_temperature(cfg: LossConfig, state: dict) -> jax.Array:
  """T_high while the last rollout's sampled-token NLL (`state["entropy"]`, a scalar) is below
  target, else T_low; a float32 scalar."""
  chex.assert_rank(state["entropy"], 0)
  c = cfg.aepo
  return jnp.where(state["entropy"] < c.target, c.temperature_high, c.temperature_low)


def aepo_rollout(cfg: LossConfig, responses, ctx, state):
  """Samples at T for a quarter of the prompts and swaps the kept ones in (module docstring)."""
  c = cfg.aepo
  groups = int(responses.group_ids.max()) + 1
  quarter = max(1, groups // 4)
  first = responses.take(np.flatnonzero(responses.group_ids < quarter))
  starts = np.flatnonzero(np.diff(first.group_ids, prepend=-1))
  extra = ctx.sample(
      first.prompt_tokens[starts],
      first.prompt_lengths[starts],
      [first.examples[i] for i in starts],
      np.arange(quarter),
      ctx.group_size,
      jax.random.fold_in(ctx.key, 23),
      temperature=aepo_temperature(cfg, state),
  )
  adv = np.asarray(
      advantages_lib.compute_advantages(
          "grpo", jnp.asarray(extra.rewards), jnp.asarray(extra.group_ids), quarter
      )
  )
  kept = np.flatnonzero(adv > c.min_advantage)
  limit = c.num_reinforce if float(state["entropy"]) <= c.target else c.num_reinforce // 2
  kept = kept[: min(limit, responses.rows)]
  flag = np.zeros(responses.rows, bool)
  if kept.size:
    chosen = extra.take(kept)
    swapped = dataclasses.replace(
        chosen,
        group_ids=responses.group_ids[: kept.size],
        info={k: v[: kept.size] for k, v in responses.info.items()},
    )
    rest = responses.take(np.arange(kept.size, responses.rows))
    responses = type(responses).concat([swapped, rest], ctx.pad_id)
    flag[: kept.size] = True
  responses.info[FLAG] = flag
  return responses


def aepo_advantages(cfg: LossConfig, batch: TokenBatch, stats: None, state: dict) -> jax.Array:
  """GRPO advantages of the unmarked rows (marked rows: 0 and left out of the statistics).

  Reads the `[B]` flag `info["aepo_reinforce"]`, `group_ids` and `rewards` and the `[B, T]`
  mask; returns `[B, T]` advantages.
  """
  del stats, state
  flag = batch.require(FLAG, "aepo")
  groups = batch.require("group_ids", "aepo")
  rewards = batch.require("rewards", "aepo")
  chex.assert_rank([batch.mask, flag, groups, rewards], [2, 1, 1, 1])
  chex.assert_equal_shape([flag, groups, rewards])
  chex.assert_equal_shape_prefix([batch.mask, flag], 1)
  marked = flag > 0
  rewards = jnp.where(marked, 0.0, rewards)
  ones = (~marked).astype(jnp.float32)
  num = int(groups.shape[0])
  count = jax.ops.segment_sum(ones, groups, num_segments=num)
  mean = jax.ops.segment_sum(rewards * ones, groups, num_segments=num) / jnp.maximum(count, 1)
  var = jax.ops.segment_sum(
      jnp.square(rewards - mean[groups]) * ones, groups, num_segments=num
  ) / jnp.maximum(count - 1, 1)
  std = jnp.where(count > 1, jnp.sqrt(var), 1.0)
  seq = jnp.where(marked, 0.0, (rewards - mean[groups]) / (std[groups] + 1e-6))
  return seq[:, None] * batch.mask


def aepo_reinforce(
    cfg: LossConfig, batch: TokenBatch, stats: None, state: dict, agg: Aggregator
) -> RegulariserOutput:
  """`α · Agg(−ℓ, m ⊙ marked)`; metric: the marked rows' mean −ℓ (`logp`, `mask` `[B, T]`, the
  flag `[B]`)."""
  del stats, state
  flag = batch.require(FLAG, "aepo")
  chex.assert_rank([batch.logp, flag], [2, 1])
  chex.assert_equal_shape([batch.logp, batch.mask])
  chex.assert_equal_shape_prefix([batch.logp, flag], 1)
  marked = (flag > 0).astype(jnp.float32)[:, None] * batch.mask
  nll = agg(-batch.logp, marked, "token-mean")
  return RegulariserOutput(loss=cfg.aepo.coef * nll, metric=jax.lax.stop_gradient(nll))


def _after_update(cfg: LossConfig, state: dict, rollout: TokenBatch) -> tuple[dict, dict]:
  entropy = masked_mean(-rollout.old_logp, rollout.mask)
  return {"entropy": entropy}, {
      "sampled_nll": entropy,
      "next_temperature": aepo_temperature(cfg, {"entropy": entropy}),
  }


_active = lambda cfg: cfg.aepo.enabled

ROLLOUT = Intervention(
    name="aepo",
    kind="rollout",
    apply=None,
    config=AEPOConfig,
    active=_active,
    init_state=lambda cfg: {"entropy": jnp.float32(0.0)},
    after_update=_after_update,
    rollout=aepo_rollout,
)
ADVANTAGE = Intervention(
    name="aepo_advantage",
    kind="advantage",
    apply=aepo_advantages,
    active=_active,
    needs=lambda cfg: frozenset({FLAG, "rewards"}),
)
REGULARISER = Intervention(
    name="aepo_reinforce",
    kind="regulariser",
    apply=aepo_reinforce,
    active=_active,
    needs=lambda cfg: frozenset({FLAG}),
)
