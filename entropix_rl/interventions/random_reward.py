"""Random rewards: a control for entropy drift that comes from clipping alone (Park et al.
2025, "Clip-Low Increases Entropy and Clip-High Decreases Entropy in Reinforcement Learning
of Large Language Models", arXiv 2509.26114).

A rollout intervention, no loss part. Every response's reward is replaced by an independent
draw

    r_i ~ Bernoulli(p)                                        i = 1 .. N

so the advantages carry no information about the task. Without clipping, the expected
policy-gradient update is then zero and the entropy has no drift in expectation; with PPO's
clip, tokens with A < 0 whose ratio fell below 1 − ε_low stop receiving gradient (the paper:
this raises entropy) and tokens with A > 0 above 1 + ε_high too (this lowers it). The
accuracy metrics still report the verifier's judgement. `configs/clip_bounds.py` runs the
control over ε_low × ε_high.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

from entropix_rl.checks import check_bool, check_number
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention


@dataclasses.dataclass(frozen=True)
class RandomRewardConfig:
  """Random-reward constants.

  Attributes:
    enabled: replace the verifier's rewards by Bernoulli(`p`) draws.
    p: probability of reward 1, in [0, 1].
  """

  enabled: bool = False
  p: float = 0.5

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_number(f"{path}.p", self.p, low=0.0, high=1.0)


def bernoulli_rewards(key: jax.Array, rows: int, p: float | jax.Array) -> jax.Array:
  """`r_i ~ Bernoulli(p)`, i = 1 .. rows, independent draws from `key`.

  Args:
    key: PRNG key.
    rows: N, the number of responses (static).
    p: scalar probability of reward 1, in [0, 1].

  Returns:
    `[rows]` float32 rewards in {0, 1}.
  """
  chex.assert_rank(p, 0)
  return jax.random.bernoulli(key, p, (rows,)).astype(jnp.float32)


def random_reward_rollout(cfg: LossConfig, responses, ctx, state):
  """Replaces `responses.rewards` by independent Bernoulli(p) draws."""
  del state
  key = jax.random.fold_in(ctx.key, 41)
  rewards = np.asarray(bernoulli_rewards(key, responses.rows, cfg.random_reward.p))
  return dataclasses.replace(responses, rewards=rewards)


INTERVENTION = Intervention(
    name="random_reward",
    kind="rollout",
    apply=None,
    config=RandomRewardConfig,
    active=lambda cfg: cfg.random_reward.enabled,
    rollout=random_reward_rollout,
)
