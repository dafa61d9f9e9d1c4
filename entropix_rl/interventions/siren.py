"""SIREN: a self-anchored regulariser on the top-p entropy of each response's peak-entropy tokens
(arXiv 2509.25133, "Rethinking Entropy Regularization in Large Reasoning Models";
docs/interventions.md, SIREN; reference Linn3a/siren `efficient_top_p_sampling`,
`mask_by_quantile`, the `experiment_type == "siren"` branch of `dp_actor.py` and the anchor in
`ray_trainer.py`).

Top-p entropy (a current-policy logit feature, differentiable through p): with p the softmax
of logits / T, sort the top K = min(top_k, V) tokens by probability, keep those whose
cumulative probability (the token's own included) is strictly below top_p (the token that
crosses top_p is dropped), renormalise over the kept set S_t and

    Hᵗᵒᵖᵖ_t = −Σ_{v∈S_t} q_v log q_v,   q_v = p_v / Σ_{u∈S_t} p_u;   0 when S_t is empty
    (the top token alone has p ≥ top_p)

Peak mask (a scope statistic, without gradient): per response i, with q_i the mask_ratio
quantile of Hᵗᵒᵖᵖ over its valid tokens (linear interpolation, padding excluded),
s_t = m_t · 1[Hᵗᵒᵖᵖ_t > q_i] (the reference does not AND with m; we do).

Aggregate, seq-mean-token-mean dividing by EVERY row of the batch (as the reference's
`agg_loss`: rows with no picked token count as 0), with B rows and n_i = Σ_t s_t:

    Ĥ(θ) = (1/B) Σ_i [n_i > 0] · Σ_t s_t Hᵗᵒᵖᵖ_t / n_i

    anchored (SIREN):  L = L_pg + c·(Ĥ(θ) − H₀)²
    plain:             L = L_pg − c·Ĥ(θ)

H₀ is the intervention state: the same statistic of the OLD policy's top-p entropy over the
whole rollout of the first update (`before_update`), then held. `aux["siren"]` is Ĥ.

Ĥ goes through the loss's `Aggregator`, so it stays exact under gradient accumulation: it is
`seq-mean-token-sum-norm` (Σ_i Σ_t w·x / (B·T), B the mini-batch's rows, T the padded
length) of x_t = T·Hᵗᵒᵖᵖ_t / n_i with weights s_t, which is (1/B) Σ_i mean_i. n_i is a per-row
count and rows are never split across micro-batches, so no new aggregation mode is needed.
The loss is non-linear in Ĥ (`linear=False`): micro-batched updates run the planning pass,
whose Ĥ is replayed in every micro-batch.

Cost: the top-p entropy is a top-K over the vocabulary per token, in the loss pass (with
gradient) and, for the anchor, in the behaviour pass (without gradient, every step: it also
gives the `siren/rollout_peak_entropy` metric). Without a state (a direct `policy_loss` call
with the anchor unset) the anchored term is 0 with zero gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_bool, check_number
from entropix_rl.interventions.aggregation import Aggregator, aggregate
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention, RegulariserOutput, TokenFeature

FEATURE = "siren_top_p_entropy"
OLD_FEATURE = "siren_top_p_entropy_old"


@dataclasses.dataclass(frozen=True)
class SirenConfig:
  """SIREN constants (reference names in brackets; defaults from `exp_scripts/siren.sh`).

  Attributes:
    enabled: add the SIREN regulariser.
    coef: c_H [`entropy_coeff` 0.005].
    top_p: p of the top-p set [`entropy_topp` 0.8].
    top_k: K, tokens considered before the top-p cut [`entropy_topk` 10 000].
    mask_ratio: the per-response quantile above which tokens are kept [`mask_ratio` 0.8, i.e.
      the top ~20% of each response].
    anchored: the squared deviation from the anchor H₀ (SIREN); False gives the plain
      bonus −c·Ĥ on the same tokens (the paper's "w/o anchor" ablation).
  """

  enabled: bool = False
  coef: float = 0.005
  top_p: float = 0.8
  top_k: int = 10000
  mask_ratio: float = 0.8
  anchored: bool = True

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_number(f"{path}.coef", self.coef, low=0.0)
    check_number(f"{path}.top_p", self.top_p, low=0.0, high=1.0, low_open=True)
    if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
      raise ValueError(f"{path}.top_k={self.top_k!r}; allowed: an int >= 1")
    check_number(f"{path}.mask_ratio", self.mask_ratio, low=0.0, high=1.0)
    check_bool(f"{path}.anchored", self.anchored)


def top_p_entropy(
    logits: jax.Array, targets: jax.Array | None, temperature: float, *, top_p: float, top_k: int
) -> jax.Array:
  """Hᵗᵒᵖᵖ (module docstring) of temperature-1 logits at `temperature`.

  Args:
    logits: `[n, V]` temperature-1 logits (differentiable).
    targets: `[n]` sampled tokens, or None; unused (the signature of a `TokenFeature`).
    temperature: the rollout temperature T.
    top_p: p of the top-p set.
    top_k: K, tokens considered before the top-p cut.

  Returns:
    `[n]` float32 Hᵗᵒᵖᵖ.
  """
  chex.assert_rank(logits, 2)
  if targets is not None:
    chex.assert_shape(targets, logits.shape[:1])
  del targets
  z = jnp.asarray(logits, jnp.float32) / temperature
  top_z, _ = jax.lax.top_k(z, min(top_k, z.shape[-1]))
  logp = top_z - jax.nn.logsumexp(z, axis=-1, keepdims=True)  # log p of the top K, descending
  p = jnp.exp(logp)
  keep = jax.lax.stop_gradient(jnp.cumsum(p, axis=-1) < top_p)
  kept_p = jnp.where(keep, p, 0.0)
  mass = kept_p.sum(axis=-1)
  nonempty = keep[:, 0]
  safe_mass = jnp.where(nonempty, mass, 1.0)
  # −Σ q log q with q = p / mass:  log(mass) − Σ p log p / mass
  entropy = jnp.log(safe_mass) - jnp.sum(kept_p * jnp.where(keep, logp, 0.0), axis=-1) / safe_mass
  return jnp.where(nonempty, entropy, 0.0)


def _features(cfg: LossConfig) -> tuple[TokenFeature, ...]:
  c = cfg.siren
  fn = lambda z, y, t: top_p_entropy(z, y, t, top_p=c.top_p, top_k=c.top_k)
  return (TokenFeature(FEATURE, fn, policy="current"), TokenFeature(OLD_FEATURE, fn, policy="old"))


def peak_mask(entropy: jax.Array, mask: jax.Array, *, mask_ratio: float) -> jax.Array:
  """`[rows, T]` bool: valid tokens above their row's `mask_ratio` quantile (linear
  interpolation over the valid tokens; rows without one pick nothing), from `[rows, T]`
  `entropy` and `mask`."""
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, mask])
  entropy = jax.lax.stop_gradient(jnp.asarray(entropy, jnp.float32))
  valid = mask > 0
  bound = jnp.nanquantile(jnp.where(valid, entropy, jnp.nan), mask_ratio, axis=-1, keepdims=True)
  return valid & (entropy > bound)


def row_mean_terms(entropy: jax.Array, picked: jax.Array) -> jax.Array:
  """x_t = T·H_t / n_i: `seq-mean-token-sum-norm` of x with weights `picked` is Ĥ.

  Args:
    entropy: `[B, T]` Hᵗᵒᵖᵖ.
    picked: `[B, T]` bool peak mask s.

  Returns:
    `[B, T]` x.
  """
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, picked])
  counts = picked.sum(axis=-1, keepdims=True).astype(jnp.float32)
  return entropy * (entropy.shape[-1] / jnp.maximum(counts, 1.0))


def peak_entropy(entropy: jax.Array, picked: jax.Array) -> jax.Array:
  """Ĥ of one whole batch (module docstring) from `[B, T]` `entropy` and peak mask `picked`,
  float32 scalar."""
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, picked])
  return aggregate(row_mean_terms(entropy, picked), picked, "seq-mean-token-sum-norm")


def _active(cfg: LossConfig) -> bool:
  return cfg.siren.enabled


def _needs(cfg: LossConfig) -> frozenset:
  return frozenset({FEATURE, OLD_FEATURE}) if cfg.siren.anchored else frozenset({FEATURE})


def siren_stats(cfg: LossConfig, batch: TokenBatch, state: Any, key: jax.Array | None) -> jax.Array:
  """The peak mask s (`[rows, T]` bool) from the current top-p entropy (`[rows, T]`), without
  gradient."""
  del state, key
  entropy = batch.require(FEATURE, "siren")
  chex.assert_rank(batch.mask, 2)
  chex.assert_equal_shape([entropy, batch.mask])
  return peak_mask(entropy, batch.mask, mask_ratio=cfg.siren.mask_ratio)


def siren(
    cfg: LossConfig, batch: TokenBatch, picked: jax.Array, state: dict | None, agg: Aggregator
) -> RegulariserOutput:
  """`c·(Ĥ − H₀)²` (anchored) or `−c·Ĥ` (plain); metric Ĥ. The top-p entropy feature and the
  peak mask `picked` are `[B, T]`."""
  c = cfg.siren
  entropy = batch.require(FEATURE, "siren")
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, picked])
  value = agg(row_mean_terms(entropy, picked), picked, "seq-mean-token-sum-norm")
  if not c.anchored:
    return RegulariserOutput(loss=-c.coef * value, metric=jax.lax.stop_gradient(value))
  anchor = jax.lax.stop_gradient(value)
  if state:
    anchor = jnp.where(state["anchor_set"], state["anchor"], anchor)
  return RegulariserOutput(
      loss=c.coef * jnp.square(value - anchor), metric=jax.lax.stop_gradient(value)
  )


def init_siren_state(cfg: LossConfig) -> dict:
  """`{"anchor": f32, "anchor_set": bool}` when anchored (unset), else `{}`."""
  if not cfg.siren.anchored:
    return {}
  return {"anchor": jnp.float32(0.0), "anchor_set": jnp.bool_(False)}


def _before_update(cfg: LossConfig, state: dict, rollout: TokenBatch) -> tuple[dict, dict]:
  """Sets H₀ from the first update's rollout (old policy, whole batch); reports the rollout's Ĥ."""
  if not cfg.siren.anchored:
    return state, {}
  entropy = rollout.require(OLD_FEATURE, "siren")
  value = peak_entropy(entropy, peak_mask(entropy, rollout.mask, mask_ratio=cfg.siren.mask_ratio))
  anchor = jnp.where(state["anchor_set"], state["anchor"], value).astype(jnp.float32)
  return (
      {"anchor": anchor, "anchor_set": jnp.bool_(True)},
      {"rollout_peak_entropy": value, "anchor": anchor},
  )


INTERVENTION = Intervention(
    name="siren",
    kind="regulariser",
    apply=siren,
    config=SirenConfig,
    active=_active,
    needs=_needs,
    grad_needs=lambda cfg: frozenset({FEATURE}),
    features=_features,
    scope_stats=siren_stats,
    init_state=init_siren_state,
    before_update=_before_update,
    linear=False,
)
