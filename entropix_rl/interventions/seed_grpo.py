"""SEED-GRPO: semantic-entropy-scaled advantages (Chen et al. 2025, arXiv 2505.12346).

An `advantage` intervention: once per update, on the whole rollout. The responses of each
prompt group are clustered by their final answer (`TokenBatch.cluster_ids`, filled by the
trainer from the task's `answer_key` with `rl.cluster_by`; −1 = no answer, a cluster of its
own). With ℓ̄_i the length-normalised old sequence log-prob of response i:

    w_i    = exp(ℓ̄_i)  ("likelihood" mass)   or 1  ("count" mass)
    p_k    = Σ_{i∈C_k} w_i / Σ_{i∈group} w_i                  (normalised over the sampled set)
    SE     = −Σ_k p_k ln p_k          ("entropy")    or  −(1/K) Σ_k ln p_k  ("mean_log", the
                                                                     paper's Monte-Carlo form)
    x      = α · SE / ln G,   A'_i = A_i · f(x)

with G the group's size and f one of

    linear       1 − min(x, 1)
    exponential  exp(−x)
    focal        (1 − min(x, 1))^γ
    inverse      1 / (1 + x)       (the scale of a third-party reimplementation)

All answers in one cluster give SE = 0 and scale 1; G distinct answers of equal mass give
SE = ln G. No official code was found: the forms of f, the default α = 1 and γ = 2, and the
estimator are UNVERIFIED (fields). The "entropy" estimator with "likelihood" masses is the
reimplementation's; the paper writes the Monte-Carlo form with unnormalised π_old(o|q).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_bool, check_choice, check_number
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention

SCALE_FNS = ("linear", "exponential", "focal", "inverse")
ESTIMATORS = ("entropy", "mean_log")
MASSES = ("likelihood", "count")
_TINY = 1e-30


@dataclasses.dataclass(frozen=True)
class SeedGRPOConfig:
  """Constants of SEED-GRPO (all UNVERIFIED against the authors; module docstring).

  Attributes:
    enabled: scale the rollout's advantages.
    alpha: α ≥ 0, sensitivity to the normalised semantic entropy.
    scale_fn: f, one of `SCALE_FNS`.
    gamma: γ > 0, the focal exponent.
    estimator: the semantic-entropy estimator, one of `ESTIMATORS`.
    mass: cluster masses from length-normalised old likelihoods or counts, one of `MASSES`.
  """

  enabled: bool = False
  alpha: float = 1.0
  scale_fn: str = "linear"
  gamma: float = 2.0
  estimator: str = "entropy"
  mass: str = "likelihood"

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_number(f"{path}.alpha", self.alpha, low=0.0)
    check_choice(f"{path}.scale_fn", self.scale_fn, SCALE_FNS)
    check_number(f"{path}.gamma", self.gamma, low=0.0, low_open=True)
    check_choice(f"{path}.estimator", self.estimator, ESTIMATORS)
    check_choice(f"{path}.mass", self.mass, MASSES)


def semantic_entropy(
    seq_logp: jax.Array, group_ids: jax.Array, cluster_ids: jax.Array, *, estimator: str, mass: str
) -> jax.Array:
  """The semantic entropy SE of each response's group (module docstring).

  Args:
    seq_logp: `[B]` length-normalised old sequence log-probs ℓ̄.
    group_ids: `[B]` int prompt group of each response.
    cluster_ids: `[B]` int answer cluster within the group, −1 for no answer (a singleton).
    estimator: one of `ESTIMATORS`.
    mass: one of `MASSES`.

  Returns:
    `[B]` float32, SE of the response's group (equal within a group).
  """
  chex.assert_rank([seq_logp, group_ids, cluster_ids], 1)
  chex.assert_equal_shape([seq_logp, group_ids, cluster_ids])
  same_group = group_ids[:, None] == group_ids[None, :]
  same_answer = (cluster_ids[:, None] == cluster_ids[None, :]) & (cluster_ids[:, None] >= 0)
  same_cluster = same_group & (same_answer | jnp.eye(seq_logp.shape[0], dtype=bool))
  if mass == "likelihood":
    top = jnp.max(jnp.where(same_group, seq_logp[None, :], -jnp.inf), axis=1)
    weight = jnp.exp(seq_logp - top)
  else:
    weight = jnp.ones_like(seq_logp)
  group_mass = jnp.where(same_group, weight[None, :], 0.0).sum(axis=1)
  cluster_mass = jnp.where(same_cluster, weight[None, :], 0.0).sum(axis=1)
  log_p = jnp.log(jnp.maximum(cluster_mass / group_mass, _TINY))
  if estimator == "entropy":  # −Σ_k p_k ln p_k = −Σ_i (w_i / W) ln p_{c(i)}
    per_response = -(weight / group_mass) * log_p
    return jnp.where(same_group, per_response[None, :], 0.0).sum(axis=1)
  share = 1.0 / same_cluster.sum(axis=1)  # each member carries 1/|C| of its cluster
  total = jnp.where(same_group, (-share * log_p)[None, :], 0.0).sum(axis=1)
  clusters = jnp.where(same_group, share[None, :], 0.0).sum(axis=1)
  return total / clusters


def uncertainty_scale(x: jax.Array, scale_fn: str, gamma: float) -> jax.Array:
  """f(x) for x = α·SE/ln G ≥ 0 (module docstring).

  Args:
    x: `[B]` x ≥ 0 of each response's group.
    scale_fn: one of `SCALE_FNS`.
    gamma: γ, the focal exponent.

  Returns:
    `[B]` f(x).
  """
  chex.assert_rank(x, 1)
  if scale_fn == "linear":
    return 1.0 - jnp.minimum(x, 1.0)
  if scale_fn == "exponential":
    return jnp.exp(-x)
  if scale_fn == "focal":
    return (1.0 - jnp.minimum(x, 1.0)) ** gamma
  if scale_fn == "inverse":
    return 1.0 / (1.0 + x)
  raise ValueError(f"loss.seed_grpo.scale_fn={scale_fn!r}; allowed: {SCALE_FNS}")


def seed_grpo_scale(
    old_logp: jax.Array,
    mask: jax.Array,
    group_ids: jax.Array,
    cluster_ids: jax.Array,
    *,
    alpha: float,
    scale_fn: str,
    gamma: float,
    estimator: str,
    mass: str,
) -> jax.Array:
  """The per-response advantage scale f(α·SE/ln G).

  Args:
    old_logp: `[B, T]` old log-probs of the sampled tokens.
    mask: `[B, T]` valid tokens.
    group_ids, cluster_ids: `[B]` int (`semantic_entropy`).
    alpha, scale_fn, gamma, estimator, mass: the constants of `SeedGRPOConfig`.

  Returns:
    `[B]` float32; 1 for a group of size 1 (ln G = 0).
  """
  chex.assert_rank([old_logp, group_ids, cluster_ids], [2, 1, 1])
  chex.assert_equal_shape([old_logp, mask])
  chex.assert_equal_shape([group_ids, cluster_ids])
  chex.assert_equal_shape_prefix([old_logp, group_ids], 1)
  mask = jnp.asarray(mask, jnp.float32)
  old_logp = jax.lax.stop_gradient(jnp.where(mask > 0, old_logp, 0.0))
  seq_logp = (old_logp * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
  entropy = semantic_entropy(seq_logp, group_ids, cluster_ids, estimator=estimator, mass=mass)
  size = (group_ids[:, None] == group_ids[None, :]).sum(axis=1)
  max_entropy = jnp.log(jnp.maximum(size, 1).astype(jnp.float32))
  x = jnp.where(size > 1, alpha * entropy / jnp.where(size > 1, max_entropy, 1.0), 0.0)
  return uncertainty_scale(x, scale_fn, gamma)


def seed_grpo(cfg: LossConfig, batch: TokenBatch, stats: None, state: None) -> jax.Array:
  """`A · f(α·SE/ln G)` per group, 0 on masked tokens (only when `loss.seed_grpo.enabled`).

  Reads the `[B, T]` `advantages`, `old_logp` and `mask` and the `[B]` `group_ids` and
  `cluster_ids`; returns `[B, T]`.
  """
  del stats, state
  c = cfg.seed_grpo
  group_ids = batch.require("group_ids", "seed_grpo")
  cluster_ids = batch.require("cluster_ids", "seed_grpo")
  chex.assert_rank([batch.advantages, group_ids, cluster_ids], [2, 1, 1])
  chex.assert_equal_shape([batch.advantages, batch.old_logp, batch.mask])
  chex.assert_equal_shape([group_ids, cluster_ids])
  chex.assert_equal_shape_prefix([batch.advantages, group_ids], 1)
  scale = seed_grpo_scale(
      batch.old_logp,
      batch.mask,
      group_ids,
      cluster_ids,
      alpha=c.alpha,
      scale_fn=c.scale_fn,
      gamma=c.gamma,
      estimator=c.estimator,
      mass=c.mass,
  )
  return batch.advantages * scale[:, None] * batch.mask


INTERVENTION = Intervention(
    name="seed_grpo",
    kind="advantage",
    apply=seed_grpo,
    config=SeedGRPOConfig,
    active=lambda cfg: cfg.seed_grpo.enabled,
    needs=lambda cfg: frozenset({"cluster_ids", "group_ids"}),
)
