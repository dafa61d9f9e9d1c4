"""ETTRL: entropy-fork tree rollouts and entropy-based advantage reshaping for test-time RL
(Liu et al. 2025, arXiv 2508.11356). No public code was found: beyond the abstract, the
design below is ours [UNVERIFIED], with the tree modelled on TreeRL's EPTree (Hou et al. 2025,
arXiv 2506.11902).

A rollout intervention (ETMR, entropy-fork tree majority rollout) and an `advantage`
intervention (EAR, entropy-based advantage reshaping):

* rollout, per prompt: sample `num_roots` = M responses (the roots); then, for `rounds` = L
  rounds, choose the `forks` = N highest-entropy positions among the prompt's existing paths
  (the sampler's per-token entropy H_t; never position 0, a stop token, padding or a position
  already forked) and sample `branches` = T continuations from each prefix, the token at the
  fork resampled. The leaves, M + L·N·T per prompt, are the training samples (`rl.group_size`
  must equal that count). A branch carries its prefix in the prompt: the update trains on its
  continuation, the vote and the verifier read the whole response. A prompt with fewer than
  N eligible positions gets fresh root samples in place of the missing forks.
* reward: TTRL's majority vote over all leaves (`ttrl.pseudo_label_rewards`):

      ŷ = most_common(key_vote(o_1), ..., key_vote(o_G)),   r_i = 1[key_reward(o_i) = key_reward(ŷ)]

* EAR (`ear`): with H̄_i the mean old-policy entropy of response i's trained tokens,

      Ã_i = A_i · g(H̄_i / mean_{j ∈ group(i)} H̄_j),      g(x) = clip(x^γ, g_min, g_max)

  a response-level multiplier; γ = 1 is the identity inside the clip, and EAR is off by
  default. The paper's EAR formula was not found; this form is our design [UNVERIFIED].

The ground truth never enters the reward (accuracy metrics still report the verifier).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

from entropix_rl.checks import check_bool, check_choice, check_number
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention
from entropix_rl.interventions.rollout_ops import branch_prompts
from entropix_rl.interventions.ttrl import KEY_MODES, pseudo_label_rewards


@dataclasses.dataclass(frozen=True)
class ETTRLConfig:
  """ETTRL constants [UNVERIFIED: no public code; our design].

  Attributes:
    enabled: use ETTRL's tree rollout and majority-vote rewards.
    num_roots: M ≥ 1, responses sampled from the prompt.
    rounds: L ≥ 0, forking rounds.
    forks: N ≥ 1, fork positions chosen per prompt and round.
    branches: T ≥ 1, continuations sampled from each fork.
    vote_by: answer key of the vote (`exact_string` or `value`).
    reward_by: answer key compared with the vote winner's for the reward.
    ear: reshape advantages by response entropy (EAR).
    ear_power: γ of g(x) = clip(x^γ, g_min, g_max) (1 = identity inside the clip).
    ear_min, ear_max: g_min ≥ 0 and g_max ≥ g_min.
  """

  enabled: bool = False
  num_roots: int = 2
  rounds: int = 1
  forks: int = 2
  branches: int = 3
  vote_by: str = "exact_string"
  reward_by: str = "value"
  ear: bool = False
  ear_power: float = 1.0
  ear_min: float = 0.5
  ear_max: float = 2.0

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    for name in ("num_roots", "forks", "branches"):
      check_number(f"{path}.{name}", getattr(self, name), low=1)
    check_number(f"{path}.rounds", self.rounds, low=0)
    check_choice(f"{path}.vote_by", self.vote_by, KEY_MODES)
    check_choice(f"{path}.reward_by", self.reward_by, KEY_MODES)
    check_bool(f"{path}.ear", self.ear)
    check_number(f"{path}.ear_power", self.ear_power)
    check_number(f"{path}.ear_min", self.ear_min, low=0.0)
    check_number(
        f"{path}.ear_max",
        self.ear_max,
        low=self.ear_min,
        allowed=f"a number >= {path}.ear_min ({self.ear_min})",
    )

  @property
  def leaves(self) -> int:
    """Training samples per prompt, M + L·N·T."""
    return self.num_roots + self.rounds * self.forks * self.branches


def fork_points(
    entropy: np.ndarray, eligible: np.ndarray, group_ids: np.ndarray, forks: int
) -> tuple[np.ndarray, np.ndarray]:
  """The `forks` highest-entropy eligible positions of each group's rows.

  Ties go to the earlier row, then the earlier position. A group with fewer eligible
  positions is filled with `(its first row, 0)`: a fresh sample from the prompt.

  Args:
    entropy: `[N, C]` per-token entropy; eligible: `[N, C]` bool candidates.
    group_ids: `[N]` the rows' prompts.
    forks: positions per group.

  Returns:
    `(rows, cuts)`, `[groups · forks]` each, group by group in order of first appearance.
  """
  group_ids = np.asarray(group_ids)
  chex.assert_rank([entropy, eligible, group_ids], [2, 2, 1])
  chex.assert_equal_shape([entropy, eligible])
  chex.assert_equal_shape_prefix([entropy, group_ids], 1)
  rows_out, cuts_out = [], []
  for group in dict.fromkeys(group_ids.tolist()):
    rows = np.flatnonzero(group_ids == group)
    cand_rows, cand_pos = np.nonzero(eligible[rows])
    order = np.argsort(-entropy[rows][cand_rows, cand_pos], kind="stable")[:forks]
    picked_rows = list(rows[cand_rows[order]]) + [rows[0]] * (forks - order.size)
    picked_cuts = list(cand_pos[order]) + [0] * (forks - order.size)
    rows_out += picked_rows
    cuts_out += picked_cuts
  return np.asarray(rows_out, np.int64), np.asarray(cuts_out, np.int64)


def fork_candidates(responses, stop_ids: tuple[int, ...], taken: np.ndarray) -> np.ndarray:
  """`[N, C]` bool: valid tokens that are not position 0, a stop token or already forked
  (`taken`, `[N, C]` bool as the responses' completions)."""
  chex.assert_rank(taken, 2)
  chex.assert_equal_shape([responses.completion_tokens, responses.completion_mask, taken])
  eligible = responses.completion_mask & ~np.isin(responses.completion_tokens, stop_ids) & ~taken
  eligible[:, 0] = False
  return eligible


def ettrl_rollout(cfg: LossConfig, responses, ctx, state):
  """Grows each prompt's tree from its roots, then rewards the leaves by majority vote."""
  del state
  c = cfg.ettrl
  if c.leaves != ctx.group_size:
    raise ValueError(
        f"loss.ettrl: num_roots + rounds·forks·branches = {c.num_roots} + "
        f"{c.rounds}·{c.forks}·{c.branches} = {c.leaves} leaves per prompt must "
        f"equal rl.group_size={ctx.group_size}"
    )
  tree = responses
  taken = np.zeros(tree.completion_mask.shape, bool)
  for level in range(c.rounds):
    rows, cuts = fork_points(
        tree.entropy, fork_candidates(tree, ctx.stop_ids, taken), tree.group_ids, c.forks
    )
    taken[rows[cuts > 0], cuts[cuts > 0]] = True
    prompts, lengths = branch_prompts(
        tree, rows, cuts, min_bucket=ctx.min_prompt_bucket, pad_id=ctx.pad_id
    )
    leaves = ctx.sample(
        prompts,
        lengths,
        [tree.examples[i] for i in rows],
        tree.group_ids[rows],
        c.branches,
        jax.random.fold_in(ctx.key, 31 + level),
        prefix_lengths=tree.prefix_lengths[rows] + cuts,
    )
    tree = type(tree).concat([tree, leaves], ctx.pad_id)
    taken = np.concatenate([taken, np.zeros(leaves.completion_mask.shape, bool)])
  tree = tree.grouped()
  rewards = pseudo_label_rewards(
      ctx.answer_keys(tree, c.vote_by), ctx.answer_keys(tree, c.reward_by), tree.group_ids
  )
  return dataclasses.replace(tree, rewards=rewards)


def ear_multiplier(
    mean_entropy: jax.Array, group_ids: jax.Array, *, power: float, low: float, high: float
) -> jax.Array:
  """EAR's response-level multiplier `g(H̄_i / mean_group H̄) = clip((·)^γ, g_min, g_max)`.

  Args:
    mean_entropy: `[B]` H̄_i, each response's mean entropy.
    group_ids: `[B]` int32 prompt groups (ids < B).
    power: γ; low, high: g_min, g_max.

  Returns:
    `[B]` float32; a group whose mean entropy is 0 gets x = 1.
  """
  chex.assert_rank([mean_entropy, group_ids], 1)
  chex.assert_equal_shape([mean_entropy, group_ids])
  num = mean_entropy.shape[0]
  total = jax.ops.segment_sum(mean_entropy, group_ids, num_segments=num)
  count = jax.ops.segment_sum(jnp.ones_like(mean_entropy), group_ids, num_segments=num)
  group_mean = (total / jnp.maximum(count, 1.0))[group_ids]
  ratio = jnp.where(group_mean > 0, mean_entropy / jnp.where(group_mean > 0, group_mean, 1.0), 1.0)
  return jnp.clip(jnp.power(ratio, power), low, high)


def ear_advantages(cfg: LossConfig, batch: TokenBatch, stats: None, state: None) -> jax.Array:
  """`A_i · g(H̄_i / mean_group H̄)` with H̄ the old-policy entropy's response mean (`advantages`,
  `old_entropy`, `mask` `[B, T]`, `group_ids` `[B]`)."""
  del stats, state
  c = cfg.ettrl
  entropy = batch.require("old_entropy", "ettrl_ear")
  group_ids = batch.require("group_ids", "ettrl_ear")
  chex.assert_rank([batch.advantages, group_ids], [2, 1])
  chex.assert_equal_shape([batch.advantages, entropy, batch.mask])
  chex.assert_equal_shape_prefix([batch.advantages, group_ids], 1)
  mask = batch.mask
  mean_entropy = (entropy * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
  scale = ear_multiplier(
      mean_entropy,
      group_ids,
      power=c.ear_power,
      low=c.ear_min,
      high=c.ear_max,
  )
  return batch.advantages * scale[:, None]


ROLLOUT = Intervention(
    name="ettrl",
    kind="rollout",
    apply=None,
    config=ETTRLConfig,
    active=lambda cfg: cfg.ettrl.enabled,
    samples_per_prompt=lambda cfg, group_size, state: cfg.ettrl.num_roots,
    rollout=ettrl_rollout,
)
EAR = Intervention(
    name="ettrl_ear",
    kind="advantage",
    apply=ear_advantages,
    active=lambda cfg: cfg.ettrl.enabled and cfg.ettrl.ear,
    needs=lambda cfg: frozenset({"old_entropy", "group_ids"}),
)
