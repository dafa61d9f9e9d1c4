"""Lp-Reg: keep low-probability tokens alive by pulling them towards a min-p proxy of the old
policy (Huang et al. 2025, arXiv 2510.03222, "Low-probability Tokens Sustain Exploration in
RLVR"; docs/interventions.md, Lp-Reg; reference CarlanLark/Lp-Reg-dev
`compute_policy_loss_lp_reg`, `dp_actor.apply_min_p`).

Proxy (an old-policy logit feature, computed once per update without gradient): with π₁ the
temperature-1 distribution of the old logits z,

    keep(v)  = π₁(v) ≥ κ · max_u π₁(u)                       (min-p filter at temperature 1)
    z̃(v)     = z(v) if keep(v) else −1e4
    ℓᵖʳᵒˣʸ_t = log_softmax(z̃ / T)(y_t)                        (then divide by the temperature T)

The reference filters at temperature 1 and divides by the rollout temperature afterwards
(`apply_min_p`, then `logits.div_(temperature)`); we follow the code. At T = 1 (its scripts)
this is the paper's min-p proxy, the old policy renormalised over the kept set. A filtered token
has ℓᵖʳᵒˣʸ ≈ −1e4/T, so it is never regularised.

Selection, per scope, among the valid tokens with A < 0 (N_neg of them):

    k = max(1, floor(ρ · N_neg));  if k > 1: the k lowest current sg(ℓ_t), then keep those with
    sg(ℓ_t) < ℓᵖʳᵒˣʸ_t;  if k = 1: no token (the reference's `if k > 1`)

Loss:

    L_t = −A_t·r_t + β·k3_t                 picked tokens (unclipped)
    L_t = Lᵖᵖᵒ_t                            the others (the configured PPO loss)
    k3_t = clip(exp(ℓᵖʳᵒˣʸ_t − ℓ_t) − (ℓᵖʳᵒˣʸ_t − ℓ_t) − 1, −10, 10)

k3 estimates KL(π_θ ‖ π_proxy) at the sampled token; its gradient pushes ℓ up towards
ℓᵖʳᵒˣʸ. The ±10 clamp is the reference's: once ℓᵖʳᵒˣʸ − ℓ ≳ 2.6 nats (k3 ≥ 10) the term is
constant and its gradient is 0, so the tokens farthest below their proxy get only the
policy-gradient term −A·r.

Differences from the reference, on purpose: `r = exp(clip(ℓ − ℓᵒˡᵈ, −20, 20))` as in every
other surrogate here; the reference does not clamp. They differ only when
|ℓ − ℓᵒˡᵈ| > 20 nats (r > 4.8e8), where the reference's loss is astronomically large for A < 0
(and overflows to inf in float32 beyond 88 nats); here it is constant with zero gradient.
Ties among equal ℓ go to the lower flat index (torch.topk is unspecified). The positive-
advantage branch (ρ_pos, 0 in every reference script) is not implemented. The configured
`dual_clip_c` applies to the unpicked tokens if set (the reference has none; default off).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_number, check_ratio
from entropix_rl.interventions import selection
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.kl_ref import kl_estimate
from entropix_rl.interventions.ppo import importance_ratio, ppo_terms_from_config
from entropix_rl.interventions.registry import Intervention, SurrogateOutput, TokenFeature

PROXY = "lp_reg_proxy_logp"
FILTERED_LOGIT = -1e4  # the reference's value for filtered logits


@dataclasses.dataclass(frozen=True)
class LpRegConfig:
  """Lp-Reg constants (reference names in brackets).

  Attributes:
    kappa: κ, the min-p threshold relative to the top probability [`minp_p_threshold` 0.02].
    ratio: ρ, fraction of the scope's negative-advantage tokens considered, lowest ℓ first
      [`logp_neg_k_percent` 0.01 for Qwen3-14B, 0.005 for Qwen2.5-32B; a fraction despite the
      name]. No token is picked unless floor(ρ·N_neg) ≥ 2.
    coef: β, weight of the k3 term [`ppo_kl_coef` 1].
  """

  kappa: float = 0.02
  ratio: float = 0.01
  coef: float = 1.0

  def validate(self, path: str) -> None:
    check_number(f"{path}.kappa", self.kappa, low=0.0, high=1.0, low_open=True)
    check_ratio(f"{path}.ratio", self.ratio)
    check_number(f"{path}.coef", self.coef, low=0.0)


def min_p_proxy_logp(
    logits: jax.Array, targets: jax.Array, temperature: float, *, kappa: float
) -> jax.Array:
  """ℓᵖʳᵒˣʸ of `targets` (module docstring) from temperature-1 logits.

  Args:
    logits: `[n, V]` temperature-1 logits z of the old policy.
    targets: `[n]` int sampled tokens y.
    temperature: the rollout temperature T.
    kappa: κ, the min-p threshold.

  Returns:
    `[n]` float32 ℓᵖʳᵒˣʸ.
  """
  chex.assert_rank([logits, targets], [2, 1])
  chex.assert_equal_shape_prefix([logits, targets], 1)
  logits = jnp.asarray(logits, jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  keep = probs >= kappa * jnp.max(probs, axis=-1, keepdims=True)
  z = jnp.where(keep, logits, FILTERED_LOGIT) / temperature
  logp = jax.nn.log_softmax(z, axis=-1)
  return jnp.take_along_axis(logp, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]


def _features(cfg: LossConfig) -> tuple[TokenFeature, ...]:
  kappa = cfg.lp_reg.kappa
  return (
      TokenFeature(PROXY, lambda z, y, t: min_p_proxy_logp(z, y, t, kappa=kappa), policy="old"),
  )


def lp_reg_pick(
    logp: jax.Array, proxy_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *, ratio: float
) -> jax.Array:
  """The Lp-Reg pick within one scope chunk (`[rows, T]` in, bool `[rows, T]` out)."""
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, proxy_logp, advantages, mask])
  logp = jax.lax.stop_gradient(logp)
  negative = (mask > 0) & (advantages < 0)
  k = jnp.maximum(1, selection.count_floor(ratio, negative.sum()))
  k_max = max(1, selection.count_floor(ratio, mask.size))
  lowest = selection.top_k_mask(-logp.ravel(), negative.ravel(), k, k_max).reshape(mask.shape)
  return lowest & (k > 1) & (logp < proxy_logp)


def lp_reg_stats(
    cfg: LossConfig, batch: TokenBatch, state: None, key: jax.Array | None
) -> jax.Array:
  """The scope's pick (`[rows, T]` bool), from the current ℓ without gradient (`logp`, the
  proxy, `advantages` and `mask`, `[rows, T]` each)."""
  del state, key
  proxy = batch.require(PROXY, "lp_reg")
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, proxy, batch.advantages, batch.mask])
  return lp_reg_pick(batch.logp, proxy, batch.advantages, batch.mask, ratio=cfg.lp_reg.ratio)


def lp_reg(cfg: LossConfig, batch: TokenBatch, selected: jax.Array, state: None) -> SurrogateOutput:
  """Lp-Reg surrogate (module docstring); `selected` is the regularised set, `[B, T]` bool as
  the batch fields."""
  del state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  chex.assert_equal_shape([batch.logp, selected])
  chex.assert_type(selected, bool)
  proxy = batch.require(PROXY, "lp_reg")
  chex.assert_equal_shape([batch.logp, proxy])
  terms = ppo_terms_from_config(cfg, batch)
  regularised = -batch.advantages * importance_ratio(
      batch.logp, batch.old_logp
  ) + cfg.lp_reg.coef * kl_estimate(batch.logp, proxy, "k3")
  return SurrogateOutput(
      per_token_loss=jnp.where(selected, regularised, terms.loss),
      loss_mask=batch.mask,
      selected=selected,
      clipped=terms.clipped & ~selected,
  )


INTERVENTION = Intervention(
    name="lp_reg",
    kind="surrogate",
    apply=lp_reg,
    config=LpRegConfig,
    needs=lambda cfg: frozenset({PROXY}),
    features=_features,
    scope_stats=lp_reg_stats,
)
