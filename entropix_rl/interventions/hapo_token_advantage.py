"""HAPO's token-level group average advantage (Liu et al. 2025, arXiv 2509.16591;
starriver030515/HAPO @ 7671dde, `compute_hapo_outcome_advantage`, `adv_estimator=hapo`).

Every valid token of response i carries its response's reward R_i. Per prompt group g, over
the valid tokens of its responses (n_i = Σ_t m_i,t):

    μ_g  = Σ_{i∈g} n_i R_i / Σ_{i∈g} n_i
    σ_g² = Σ_{i∈g} n_i (R_i − μ_g)² / Σ_{i∈g} n_i          (population variance, over tokens)
    z_i  = (R_i − μ_g) / (σ_g + ε)
    A_i  = GRPO_i  if some response of g with a valid token has |z_i| ≥ threshold, else z_i
    A_i,t = m_i,t · A_i

GRPO_i is the response-level GRPO advantage (unbiased group std, ε added to it;
`entropix_rl.advantages.grpo`). Longer responses weigh more in μ_g and σ_g, as under a
token-mean loss. An `advantage` intervention: it runs once per update on the whole rollout
and replaces the advantages of `rl.advantage`. The authors' code also counts padding
tokens in the fallback test and gives padding non-zero advantages; here only valid tokens
enter, and padding gets 0.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl import advantages as advantages_lib
from entropix_rl.checks import check_bool, check_number
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention


@dataclasses.dataclass(frozen=True)
class HAPOTokenAdvantageConfig:
  """Constants of HAPO's token-level group advantage.

  Attributes:
    enabled: replace the rollout advantages with the token-level group advantage.
    threshold: a group falls back to GRPO when some |z_i| ≥ threshold (5.0).
    eps: ε > 0 added to the std, in both forms (1e-6).
  """

  enabled: bool = False
  threshold: float = 5.0
  eps: float = 1e-6

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_number(f"{path}.threshold", self.threshold, low=0.0, low_open=True)
    check_number(f"{path}.eps", self.eps, low=0.0, low_open=True)


def token_group_advantages(
    rewards: jax.Array, group_ids: jax.Array, mask: jax.Array, *, threshold: float, eps: float
) -> jax.Array:
  """The token-level group advantage with the GRPO fallback (module docstring).

  Args:
    rewards: `[N]` sequence rewards R.
    group_ids: `[N]` int prompt group of each response, in `[0, N)`.
    mask: `[N, T]` response mask.
    threshold: fallback threshold on |z|.
    eps: added to the std.

  Returns:
    `[N, T]` float32 advantages, 0 at masked tokens.
  """
  chex.assert_rank([rewards, group_ids, mask], [1, 1, 2])
  chex.assert_equal_shape([rewards, group_ids])
  chex.assert_equal_shape_prefix([rewards, mask], 1)
  rows = rewards.shape[0]
  rewards = jnp.asarray(rewards, jnp.float32)
  valid = mask > 0
  tokens = valid.sum(axis=-1).astype(jnp.float32)
  group_sum = lambda x: jax.ops.segment_sum(x, group_ids, num_segments=rows)[group_ids]
  group_tokens = jnp.maximum(group_sum(tokens), 1.0)
  mean = group_sum(tokens * rewards) / group_tokens
  std = jnp.sqrt(group_sum(tokens * jnp.square(rewards - mean)) / group_tokens)
  z = (rewards - mean) / (std + eps)
  extreme = (tokens > 0) & (jnp.abs(z) >= threshold)
  fallback = group_sum(extreme.astype(jnp.float32)) > 0
  grpo = advantages_lib.grpo(rewards, group_ids, rows, eps=eps)
  return jnp.where(valid, jnp.where(fallback, grpo, z)[:, None], 0.0)


def _enabled(cfg: LossConfig) -> bool:
  return cfg.hapo_token_advantage.enabled


def hapo_token_advantage(
    cfg: LossConfig, rollout: TokenBatch, stats: None, state: None
) -> jax.Array:
  """The rollout's advantages `[N, T]` (only when `loss.hapo_token_advantage.enabled`), from the
  `[N]` rewards and group ids and the `[N, T]` mask."""
  del stats, state
  c = cfg.hapo_token_advantage
  who = "hapo_token_advantage"
  rewards, group_ids = rollout.require("rewards", who), rollout.require("group_ids", who)
  chex.assert_rank([rewards, group_ids, rollout.mask], [1, 1, 2])
  chex.assert_equal_shape([rewards, group_ids])
  chex.assert_equal_shape_prefix([rewards, rollout.mask], 1)
  return token_group_advantages(rewards, group_ids, rollout.mask, threshold=c.threshold, eps=c.eps)


INTERVENTION = Intervention(
    name="hapo_token_advantage",
    kind="advantage",
    apply=hapo_token_advantage,
    config=HAPOTokenAdvantageConfig,
    active=_enabled,
    needs=lambda cfg: frozenset({"rewards", "group_ids"}),
)
