"""`policy_loss`: the single entry point that composes the registered interventions.

Order (INTERVENTIONS.md, "How these map onto entropix_rl"): advantage shapers → the surrogate
named by `loss.name` (which may select tokens) → aggregation with `loss.agg` → regularisers:

    loss = Agg(L_t, M) + Σ_regularisers term
         = pg_loss + kl_ref.coef · aux["kl_ref"] − aux["entropy_bonus"]
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from entropix_rl.losses import registry
from entropix_rl.losses.aggregation import aggregate, masked_mean
from entropix_rl.losses.base import LossInputs
from entropix_rl.losses.config import LossConfig, resolve_loss_config
from entropix_rl.losses.kl_ref import kl_estimate


def _active_interventions(cfg: LossConfig) -> tuple[registry.Intervention, ...]:
  return (registry.of_kind("advantage_shaper") + (registry.get(cfg.name),)
          + registry.of_kind("regulariser"))


def loss_needs_entropy(loss_config: Any) -> bool:
  """Whether `policy_loss` reads `entropy` (else the trainer may skip computing it)."""
  cfg = resolve_loss_config(loss_config)
  return any(entry.needs_entropy(cfg) for entry in _active_interventions(cfg))


def loss_needs_entropy_grad(loss_config: Any) -> bool:
  """Whether the loss is differentiated through `entropy` (else the trainer may stop its grad)."""
  cfg = resolve_loss_config(loss_config)
  return any(entry.needs_entropy_grad(cfg) for entry in _active_interventions(cfg))


def policy_loss(loss_config: Any, *, logp: jax.Array, old_logp: jax.Array,
                advantages: jax.Array, mask: jax.Array, rng: jax.Array | None,
                ref_logp: jax.Array | None = None, entropy: jax.Array | None = None,
                entropy_coef: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The policy loss of one (mini-)batch, as configured.

  Args:
    loss_config: a `config.loss` ConfigDict or a resolved `LossConfig` (use the latter under
      jit as a static argument; a ConfigDict is validated on every call).
    logp: `[B, T]` current log-probs ℓ of the sampled tokens (differentiable).
    old_logp: `[B, T]` behaviour log-probs ℓ^old (no gradient).
    advantages: `[B, T]` per-token advantages (no gradient).
    mask: `[B, T]` response mask, 1 on tokens that count.
    rng: PRNG key (Clip-Cov's random pick); may be None for deterministic losses.
    ref_logp: `[B, T]` reference-policy log-probs, or None.
    entropy: `[B, T]` full-vocabulary entropy of the temperature-scaled logits; required
      when `loss_needs_entropy(loss_config)`, differentiable when an entropy bonus is active.
    entropy_coef: traced scalar overriding `loss.entropy_bonus.coef` (the adaptive
      controller's `entropy_coefficient`); ignored when the bonus is inactive.

  Returns:
    `(loss, aux)`; `aux` has the same keys for every configuration:
      `per_token_loss` `[B, T]` (the aggregated per-token PG loss, 0 where it does not count),
      `selected` `[B, T]` bool (the intervention's pick; all False if none),
      `clip_frac` (fraction of counted tokens whose PPO clip bound is active),
      `approx_kl` (token mean of k3(ℓ, ℓ^old)), `kl_ref` (Agg of the KL estimate to the
      reference, 0 without `ref_logp`), `n_selected`, `n_tokens` (Σ mask),
      `entropy_bonus` (`c · Agg(H)`, 0 when off) and `pg_loss` (the aggregated surrogate).
  """
  cfg = resolve_loss_config(loss_config)
  chex.assert_rank(logp, 2)
  arrays = [logp, old_logp, advantages, mask]
  arrays += [x for x in (ref_logp, entropy) if x is not None]
  chex.assert_equal_shape(arrays)
  if entropy is None and loss_needs_entropy(cfg):
    raise ValueError(f"loss.name={cfg.name!r} with these loss settings reads the per-token "
                     "entropy: pass entropy= to policy_loss")
  sg = jax.lax.stop_gradient
  f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
  inputs = LossInputs(
      logp=f32(logp), old_logp=sg(f32(old_logp)), advantages=sg(f32(advantages)),
      mask=f32(mask), rng=rng, ref_logp=sg(f32(ref_logp)) if ref_logp is not None else None,
      entropy=f32(entropy), entropy_coef=entropy_coef)

  for shaper in registry.of_kind("advantage_shaper"):
    inputs = inputs._replace(advantages=sg(shaper.fn(cfg, inputs)))
  out = registry.get(cfg.name).fn(cfg, inputs)
  pg_loss = aggregate(out.per_token_loss, out.loss_mask, cfg.agg)

  loss = pg_loss
  regularisers = {}
  for entry in registry.of_kind("regulariser"):
    term = entry.fn(cfg, inputs)
    loss = loss + term.loss
    regularisers[entry.name] = term.metric

  counted = out.loss_mask > 0
  selected = out.selected & (inputs.mask > 0)
  aux = {
      "per_token_loss": jnp.where(counted, out.per_token_loss, 0.0),
      "selected": selected,
      "clip_frac": masked_mean(out.clipped, out.loss_mask),
      "approx_kl": sg(masked_mean(kl_estimate(inputs.logp, inputs.old_logp, "k3"), inputs.mask)),
      "n_selected": selected.sum().astype(jnp.float32),
      "n_tokens": inputs.mask.sum(),
      "pg_loss": pg_loss,
      **regularisers,
  }
  return loss, aux
