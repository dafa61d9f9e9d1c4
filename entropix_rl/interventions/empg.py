"""EMPG, entropy-modulated policy gradients (Wang et al. 2025, arXiv 2509.09265, Eqs. 10-12).

An `advantage` intervention: it runs once per update on the whole rollout, with the
behaviour-policy (old) entropies. With `H_{i,j}` the mean old token entropy of step j of
response i (steps from `TokenBatch.step_ids`):

    Ĥ_{i,j}   = (H_{i,j} − min H) / (max H − min H + 1e-8)          over all steps of the batch
    g_{i,j}   = exp(−k·Ĥ_{i,j}) / mean_{steps}(exp(−k·Ĥ))          (self-calibrating, mean 1)
    f_{i,j}   = exp(−k_f·Ĥ_{i,j+1}), 0 on a response's last step   (future clarity)
    A'_{i,t}  = g_{i,j(t)} · A_{i,t} + ζ · f_{i,j(t)}

broadcast to every valid token t of step j. With one step per response (no step delimiter)
g is a per-response confidence weight and the future bonus vanishes.

The paper's optional final batch re-normalisation of A' is UNVERIFIED (no code was released);
`renormalize` applies it as `(A' − mean) / (std + 1e-8)` over the rollout's valid tokens, off
by default. Defaults k = k_f = 1, ζ = 0.1 are the project page's pseudocode.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_bool, check_number
from entropix_rl.interventions.aggregation import masked_mean
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention

NORM_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class EMPGConfig:
  """Constants of EMPG.

  Attributes:
    enabled: modulate the rollout's advantages.
    k: k ≥ 0, the confidence scale's sharpness (Eq. 10).
    k_future: k_f ≥ 0, the future-clarity bonus's sharpness (Eq. 11).
    zeta: ζ ≥ 0, the future-clarity bonus's weight.
    renormalize: re-normalise A' over the rollout's valid tokens (UNVERIFIED).
  """

  enabled: bool = False
  k: float = 1.0
  k_future: float = 1.0
  zeta: float = 0.1
  renormalize: bool = False

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_number(f"{path}.k", self.k, low=0.0)
    check_number(f"{path}.k_future", self.k_future, low=0.0)
    check_number(f"{path}.zeta", self.zeta, low=0.0)
    check_bool(f"{path}.renormalize", self.renormalize)


def step_mean_entropy(
    entropy: jax.Array, mask: jax.Array, step_ids: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Mean entropy of each step, `H_{i,j} = Σ_{t∈j} m·H / Σ_{t∈j} m`.

  Args:
    entropy: `[B, T]` token entropies.
    mask: `[B, T]` valid tokens.
    step_ids: `[B, T]` int step index of each token, in [0, T).

  Returns:
    `(step_entropy [B, T], exists [B, T] bool)`: column j is step j; a step exists when it
    holds a valid token (its entropy is 0 otherwise).
  """
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, mask, step_ids])
  rows, steps = entropy.shape
  segment = (jnp.arange(rows)[:, None] * steps + jnp.clip(step_ids, 0, steps - 1)).ravel()
  mask = jnp.asarray(mask, jnp.float32)

  def per_step(x):
    return jax.ops.segment_sum(x.ravel(), segment, num_segments=rows * steps).reshape(rows, steps)

  total, count = per_step(jnp.where(mask > 0, entropy, 0.0) * mask), per_step(mask)
  return total / jnp.maximum(count, 1.0), count > 0


def min_max_normalise(values: jax.Array, valid: jax.Array) -> jax.Array:
  """`(x − min x) / (max x − min x + 1e-8)` over the valid entries (Eq. 12); 0 elsewhere.

  Args:
    values: `[B, T]` x (column j: step j).
    valid: `[B, T]` bool, the entries that exist.

  Returns:
    `[B, T]` normalised x.
  """
  chex.assert_rank(values, 2)
  chex.assert_equal_shape([values, valid])
  low = jnp.min(jnp.where(valid, values, jnp.inf))
  high = jnp.max(jnp.where(valid, values, -jnp.inf))
  return jnp.where(valid, (values - low) / (high - low + NORM_EPS), 0.0)


def empg_advantages(
    advantages: jax.Array,
    entropy: jax.Array,
    mask: jax.Array,
    step_ids: jax.Array,
    *,
    k: float,
    k_future: float,
    zeta: float,
    renormalize: bool = False,
) -> jax.Array:
  """`A' = g·A + ζ·f` per step (module docstring), without gradient.

  Args:
    advantages: `[B, T]` advantages A.
    entropy: `[B, T]` old-policy token entropies.
    mask: `[B, T]` valid tokens.
    step_ids: `[B, T]` int step index of each token.
    k, k_future, zeta: the constants of `EMPGConfig`.
    renormalize: re-normalise A' over the valid tokens (UNVERIFIED).

  Returns:
    `[B, T]` modulated advantages, 0 on masked tokens.
  """
  chex.assert_rank(advantages, 2)
  chex.assert_equal_shape([advantages, entropy, mask, step_ids])
  advantages, entropy = jax.lax.stop_gradient((advantages, entropy))
  step_entropy, exists = step_mean_entropy(entropy, mask, step_ids)
  normalised = min_max_normalise(step_entropy, exists)
  confidence = jnp.where(exists, jnp.exp(-k * normalised), 0.0)
  scale = confidence / jnp.maximum(masked_mean(confidence, exists), NORM_EPS)
  clarity = jnp.where(exists, jnp.exp(-k_future * normalised), 0.0)
  future = jnp.pad(clarity[:, 1:], ((0, 0), (0, 1)))
  index = jnp.clip(step_ids, 0, step_ids.shape[1] - 1)
  token_scale = jnp.take_along_axis(scale, index, axis=1)
  token_future = jnp.take_along_axis(future, index, axis=1)
  mask = jnp.asarray(mask, jnp.float32)
  modulated = (token_scale * advantages + zeta * token_future) * mask
  if renormalize:
    mean = masked_mean(modulated, mask)
    std = jnp.sqrt(masked_mean(jnp.square(modulated - mean), mask))
    modulated = (modulated - mean) / (std + NORM_EPS) * mask
  return modulated


def empg(cfg: LossConfig, batch: TokenBatch, stats: None, state: None) -> jax.Array:
  """The rollout's `[B, T]` EMPG advantages (applied only when `loss.empg.enabled`)."""
  del stats, state
  c = cfg.empg
  old_entropy = batch.require("old_entropy", "empg")
  step_ids = batch.require("step_ids", "empg")
  chex.assert_rank(batch.advantages, 2)
  chex.assert_equal_shape([batch.advantages, old_entropy, batch.mask, step_ids])
  return empg_advantages(
      batch.advantages,
      old_entropy,
      batch.mask,
      step_ids,
      k=c.k,
      k_future=c.k_future,
      zeta=c.zeta,
      renormalize=c.renormalize,
  )


INTERVENTION = Intervention(
    name="empg",
    kind="advantage",
    apply=empg,
    config=EMPGConfig,
    active=lambda cfg: cfg.empg.enabled,
    needs=lambda cfg: frozenset({"old_entropy", "step_ids"}),
)
