"""EMPO: entropy-minimised policy optimisation with semantic-cluster rewards (Zhang et al. 2025,
arXiv 2504.05812; QingyangZhang/EMPO @ c5eccd4, `reward_manager/empo.py`).

A rollout intervention, no loss part, and unsupervised: the ground truth is never used. The
responses to one prompt are clustered by final answer (`cluster_by`: exact string or value)
and each is rewarded with its cluster's share of the group,

    r_i = p_c(i) = |c(i)| / G,

so maximising the reward minimises the group's semantic entropy −Σ_c p_c log p_c. Responses
without an answer are singletons (`empty_reward = "singleton"`, reward 1/G, as the verl code) or
get 0 (`"zero"`, as the TRL version). `zero_max_entropy` gives the whole group 0 when every
response is its own cluster (TRL's SE < ln G condition).
"""

from __future__ import annotations

import dataclasses

import chex
import numpy as np

from entropix_rl.checks import check_bool, check_choice
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention
from entropix_rl.interventions.rollout_ops import cluster_fractions

KEY_MODES = ("exact_string", "value")
EMPTY_REWARDS = ("singleton", "zero")


@dataclasses.dataclass(frozen=True)
class EMPOConfig:
  """EMPO constants.

  Attributes:
    enabled: replace the verifier's rewards by semantic-cluster rewards.
    cluster_by: answer key (`value`: equivalent answers share a cluster, as the reference's
      math-verify clustering; `exact_string`).
    empty_reward: `singleton` (1/G, verl) or `zero` (TRL) for responses without an answer.
    zero_max_entropy: a group of all-distinct answers gets reward 0 (TRL).
  """

  enabled: bool = False
  cluster_by: str = "value"
  empty_reward: str = "singleton"
  zero_max_entropy: bool = False

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_choice(f"{path}.cluster_by", self.cluster_by, KEY_MODES)
    check_choice(f"{path}.empty_reward", self.empty_reward, EMPTY_REWARDS)
    check_bool(f"{path}.zero_max_entropy", self.zero_max_entropy)


def cluster_rewards(
    keys: list, group_ids: np.ndarray, *, empty_reward: str, zero_max_entropy: bool
) -> np.ndarray:
  """`[N]` float32 EMPO rewards (module docstring) from the `N` answer keys (None: no answer)
  and the `[N]` group ids."""
  group_ids = np.asarray(group_ids)
  chex.assert_shape(group_ids, (len(keys),))
  rewards = cluster_fractions(keys, group_ids)
  empty = np.asarray([k is None for k in keys])
  if empty_reward == "zero":
    rewards = np.where(empty, 0.0, rewards).astype(np.float32)
  if zero_max_entropy:
    for group in np.unique(group_ids):
      rows = group_ids == group
      size = rows.sum()
      if size > 1 and np.all(
          np.isclose(
              cluster_fractions([keys[i] for i in np.flatnonzero(rows)], np.zeros(size)), 1.0 / size
          )
      ):
        rewards[rows] = 0.0
  return rewards


def empo_rollout(cfg: LossConfig, responses, ctx, state):
  del state
  c = cfg.empo
  rewards = cluster_rewards(
      ctx.answer_keys(responses, c.cluster_by),
      responses.group_ids,
      empty_reward=c.empty_reward,
      zero_max_entropy=c.zero_max_entropy,
  )
  return dataclasses.replace(responses, rewards=rewards)


INTERVENTION = Intervention(
    name="empo",
    kind="rollout",
    apply=None,
    config=EMPOConfig,
    active=lambda cfg: cfg.empo.enabled,
    rollout=empo_rollout,
)
