"""TTRL: test-time RL with majority-vote pseudo-labels (Zuo et al. 2025, arXiv 2504.16084;
PRIME-RL/TTRL @ 3e2cc93, `reward_manager/ttrl.py`, `ttt_metrics.py`).

A rollout intervention, no loss part. Per prompt it samples `n_vote` responses, takes the most
common final answer as the pseudo-label, rewards the first `rl.group_size` responses with

    ŷ   = most_common(key_vote(o_1), ..., key_vote(o_n_vote))
    r_i = 1[key_reward(o_i) = key_reward(ŷ's response)]            i = 1 .. group_size

and drops the rest (the first ones, not selected by reward, as the reference). The reference
votes over extracted answer strings and rewards by math equivalence: `vote_by` = exact_string,
`reward_by` = value. The ground truth is never used for the reward (accuracy metrics still
report the verifier's judgement). Model output is only parsed, never executed.

Metrics (the reference's `ttt_metrics.py`), means over the step's prompts and trained rows:
`ttrl/label_accuracy`, the share of prompts whose pseudo-label is a correct answer (the
verifier's judgement of the vote winner), and `ttrl/reward_accuracy`, the share of rewards that
agree with the verifier.
"""

from __future__ import annotations

import dataclasses

import chex
import numpy as np

from entropix_rl.checks import check_bool, check_choice, check_number
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention
from entropix_rl.interventions.rollout_ops import majority_labels

KEY_MODES = ("exact_string", "value")


@dataclasses.dataclass(frozen=True)
class TTRLConfig:
  """TTRL constants.

  Attributes:
    enabled: replace the verifier's rewards by majority-vote pseudo-labels.
    n_vote: responses sampled per prompt for the vote (≥ `rl.group_size`; paper: 64 with 32
      trained on).
    vote_by: answer key of the vote (`exact_string`, as the reference, or `value`).
    reward_by: answer key compared with the label for the reward (`value`: equivalence).
  """

  enabled: bool = False
  n_vote: int = 16
  vote_by: str = "exact_string"
  reward_by: str = "value"

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_number(f"{path}.n_vote", self.n_vote, low=1)
    check_choice(f"{path}.vote_by", self.vote_by, KEY_MODES)
    check_choice(f"{path}.reward_by", self.reward_by, KEY_MODES)


def pseudo_label_rewards(vote_keys: list, reward_keys: list, group_ids: np.ndarray) -> np.ndarray:
  """`[N]` float32: 1 where a response's reward key equals that of its group's vote winner.

  The winner is the most common vote key (`rollout_ops.majority_labels`); the label is the
  reward key of the group's first response with the winning vote key. A group in which no
  response has an answer gets reward 0 everywhere; a response without a reward key gets 0.

  Args:
    vote_keys: `N` answer keys the vote counts (None: no answer).
    reward_keys: `N` answer keys compared with the label.
    group_ids: `[N]` the responses' prompt groups.

  Returns:
    `[N]` float32 rewards.
  """
  group_ids = np.asarray(group_ids)
  chex.assert_shape(group_ids, (len(vote_keys),))
  chex.assert_equal(len(vote_keys), len(reward_keys))
  winners = majority_labels(vote_keys, group_ids)
  rewards = np.zeros(len(vote_keys), np.float32)
  for group, winner in winners.items():
    if winner is None:
      continue
    rows = np.flatnonzero(group_ids == group)
    label = reward_keys[next(i for i in rows if vote_keys[i] == winner)]
    for i in rows:
      rewards[i] = float(label is not None and reward_keys[i] == label)
  return rewards


def label_correct(vote_keys: list, correct: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
  """`[N]` float32: 1 on every row of a group whose vote winner is a correct answer (the
  verifier's judgement of the group's first response with the winning key), else 0."""
  group_ids, correct = np.asarray(group_ids), np.asarray(correct)
  chex.assert_shape([group_ids, correct], (len(vote_keys),))
  out = np.zeros(len(vote_keys), np.float32)
  for group, winner in majority_labels(vote_keys, group_ids).items():
    rows = np.flatnonzero(group_ids == group)
    if winner is not None:
      out[rows] = float(correct[next(i for i in rows if vote_keys[i] == winner)])
  return out


def ttrl_rollout(cfg: LossConfig, responses, ctx, state):
  """Votes over the `n_vote` responses of each prompt, keeps the first `group_size`, and reports
  the pseudo-labels' accuracy (module docstring)."""
  del state
  c = cfg.ttrl
  if c.n_vote < ctx.group_size:
    raise ValueError(f"loss.ttrl.n_vote={c.n_vote} must be >= rl.group_size={ctx.group_size}")
  vote_keys = ctx.answer_keys(responses, c.vote_by)
  rewards = pseudo_label_rewards(
      vote_keys, ctx.answer_keys(responses, c.reward_by), responses.group_ids
  )
  row_metrics = {
      **responses.row_metrics,
      "ttrl/label_accuracy": label_correct(vote_keys, responses.correct, responses.group_ids),
      "ttrl/reward_accuracy": (rewards == responses.correct).astype(np.float32),
  }
  keep = np.concatenate(
      [
          np.flatnonzero(responses.group_ids == g)[: ctx.group_size]
          for g in np.unique(responses.group_ids)
      ]
  )
  return dataclasses.replace(responses, rewards=rewards, row_metrics=row_metrics).take(keep)


INTERVENTION = Intervention(
    name="ttrl",
    kind="rollout",
    apply=None,
    config=TTRLConfig,
    active=lambda cfg: cfg.ttrl.enabled,
    samples_per_prompt=lambda cfg, group_size, state: cfg.ttrl.n_vote,
    rollout=ttrl_rollout,
)
