"""Composing the registered interventions: the loss, their per-step state, and the rollout side.

`compute_loss(cfg, batch, ...)` applies the active interventions in their registered order,
by kind (`interventions.registry`): advantage shapers → the surrogate named by `loss.name` →
aggregation with `loss.agg` → regularisers:

    loss = Agg(L, M) + Σ_regularisers term
         = pg_loss + kl_ref.coef · Agg(k(ℓ, ℓʳᵉᶠ)) − c · Agg(H) + ...

Scope statistics (token picks, weights) are computed from the batch without gradient, once
per selection scope, before the intervention that owns them runs, unless given (sliced from a
planning pass over the whole mini-batch, for gradient accumulation; `train.update`).
Aggregation goes through an `Aggregator`, which keeps every aggregate exact when the
mini-batch is split into micro-batches.

The rollout side runs on the host once per step (`train.rollout`): the active interventions'
`samples_per_prompt`, `sampling_temperature` and `temperature_rule` choose how to sample, and
their `rollout` hooks reshape the scored rows (`reshape`), in registry order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np

from entropix_rl.interventions import registry
from entropix_rl.interventions.aggregation import Aggregator, aggregator
from entropix_rl.interventions.batch import TokenBatch, stop_gradient_except
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.kl_ref import kl_estimate
from entropix_rl.interventions.selection import per_scope

LOSS_KINDS = ("advantage_shaper", "surrogate", "regulariser")
TOKEN_AUX = ("per_token_loss", "selected")  # the `[B, T]` entries of `compute_loss`'s aux


def active(
    cfg: LossConfig, kinds: tuple[str, ...] = registry.KINDS
) -> tuple[registry.Intervention, ...]:
  """The active interventions of `kinds`, kind by kind in `kinds` order, each in registry order."""
  return tuple(e for kind in kinds for e in registry.entries(kind) if e.is_active(cfg))


def needs(cfg: LossConfig) -> frozenset[str]:
  """TokenBatch fields and logit features the active interventions read."""
  return frozenset().union(*(e.needs(cfg) for e in active(cfg)))


def grad_needs(cfg: LossConfig) -> frozenset[str]:
  """Fields and features the loss is differentiated through (besides `logp`)."""
  return frozenset().union(*(e.grad_needs(cfg) for e in active(cfg)))


def features(cfg: LossConfig, policy: str) -> tuple[registry.TokenFeature, ...]:
  """The logit features of `policy` ("old" or "current") that active interventions need."""
  wanted = needs(cfg)
  seen: dict[str, registry.TokenFeature] = {}
  for entry in active(cfg):
    for feature in entry.features_for(cfg):
      if feature.policy == policy and feature.name in wanted:
        seen.setdefault(feature.name, feature)
  return tuple(seen.values())


def needs_planning_pass(cfg: LossConfig) -> bool:
  """Whether micro-batched updates need a no-grad pass over the whole mini-batch first: some
  active loss-time intervention has scope statistics or is non-linear in its aggregates."""
  return any(e.scope_stats is not None or not e.linear for e in active(cfg, LOSS_KINDS))


def init_states(cfg: LossConfig) -> dict[str, Any]:
  """The initial state of every active stateful intervention, by name."""
  return {e.name: e.init_state(cfg) for e in active(cfg) if e.init_state is not None}


def _run_hook(
    hook: str, cfg: LossConfig, states: dict[str, Any], rollout: TokenBatch
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  states, metrics = dict(states), {}
  for entry in active(cfg):
    fn = getattr(entry, hook)
    if fn is not None and entry.name in states:
      states[entry.name], entry_metrics = fn(cfg, states.get(entry.name), rollout)
      metrics.update({f"{entry.name}/{k}": v for k, v in entry_metrics.items()})
  return states, metrics


def before_update(
    cfg: LossConfig, states: dict[str, Any], rollout: TokenBatch
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """Runs the `before_update` hook of every intervention with a state in `states` (from
  `init_states`) on the whole rollout (behaviour-policy values)."""
  return _run_hook("before_update", cfg, states, rollout)


def after_update(
    cfg: LossConfig, states: dict[str, Any], rollout: TokenBatch
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """Runs the `after_update` hooks, as `before_update` does."""
  return _run_hook("after_update", cfg, states, rollout)


def rollout_advantages(cfg: LossConfig, rollout: TokenBatch, states: dict[str, Any]) -> jax.Array:
  """Applies the `advantage` interventions, in order, to the whole rollout's advantages."""
  rollout = jax.lax.stop_gradient(rollout)
  for entry in active(cfg, ("advantage",)):
    rollout = rollout.replace(advantages=entry.apply(cfg, rollout, None, states.get(entry.name)))
  return rollout.advantages


def _key(rng: jax.Array | None, name: str) -> jax.Array | None:
  return None if rng is None else jax.random.fold_in(rng, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def compute_loss(
    cfg: LossConfig,
    batch: TokenBatch,
    *,
    states: dict[str, Any],
    rng: jax.Array | None,
    agg: Aggregator,
    stats: dict[str, Any] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
  """The loss of one batch and its aux metrics (module docstring).

  Args:
    cfg: the resolved loss config.
    batch: the batch's `TokenBatch`; `logp` and the fields in `grad_needs(cfg)` may carry
      gradient, everything else is stopped here.
    states: intervention states by name (`init_states`), read-only.
    rng: PRNG key for random picks (Clip-Cov), or None.
    agg: the aggregator (`aggregation.aggregator(cfg)` for an ordinary call).
    stats: scope statistics by intervention name, from a planning pass; None computes them.

  Returns:
    `(loss, aux, stats)`; `aux` holds the scalars `pg_loss`, `clip_frac`, `approx_kl`,
    `n_selected`, `n_tokens`, `abs_log_ratio_sum`, `selected_abs_log_ratio_sum`, `kl_ref` (when
    `batch.ref_logp` is given) and each active regulariser's metric under its name, and the
    `[B, T]` arrays `per_token_loss` and `selected` (`TOKEN_AUX`).
  """
  batch = stop_gradient_except(batch, grad_needs(cfg))
  plan = stats is None
  stats = {} if stats is None else dict(stats)

  def stats_of(entry: registry.Intervention) -> Any:
    if plan and entry.scope_stats is not None:
      stats[entry.name] = jax.lax.stop_gradient(
          per_scope(
              cfg,
              lambda b, key: entry.scope_stats(cfg, b, states.get(entry.name), key),
              jax.lax.stop_gradient(batch),
              _key(rng, entry.name),
          )
      )
    return stats.get(entry.name)

  for entry in active(cfg, ("advantage_shaper",)):
    shaped = entry.apply(cfg, batch, stats_of(entry), states.get(entry.name))
    batch = batch.replace(advantages=jax.lax.stop_gradient(shaped))
  surrogate = registry.get(cfg.name)
  out = surrogate.apply(cfg, batch, stats_of(surrogate), states.get(surrogate.name))
  pg_loss = agg(out.per_token_loss, out.loss_mask)
  loss, regularisers = pg_loss, {}
  for entry in active(cfg, ("regulariser",)):
    term = entry.apply(cfg, batch, stats_of(entry), states.get(entry.name), agg)
    loss = loss + term.loss
    regularisers[entry.name] = term.metric

  sg = jax.lax.stop_gradient
  selected = out.selected & (batch.mask > 0)
  abs_log_ratio = jnp.abs(batch.logp - batch.old_logp)
  aux = {
      "per_token_loss": jnp.where(out.loss_mask > 0, out.per_token_loss, 0.0),
      "selected": selected,
      "clip_frac": sg(agg(out.clipped, out.loss_mask, "token-mean")),
      "approx_kl": sg(agg(kl_estimate(batch.logp, batch.old_logp, "k3"), batch.mask, "token-mean")),
      "n_selected": sg(agg(selected, batch.mask, "sum")),
      "abs_log_ratio_sum": sg(agg(abs_log_ratio, batch.mask, "sum")),
      "selected_abs_log_ratio_sum": sg(
          agg(jnp.where(selected, abs_log_ratio, 0.0), batch.mask, "sum")
      ),
      "n_tokens": sg(agg(batch.mask, batch.mask, "sum")),
      "pg_loss": pg_loss,
  }
  if batch.ref_logp is not None:  # logged with loss.kl_ref.coef = 0 too
    aux["kl_ref"] = sg(
        agg(kl_estimate(batch.logp, batch.ref_logp, cfg.kl_ref.estimator), batch.mask)
    )
  aux.update(regularisers)
  return loss, aux, stats


def policy_loss(
    cfg: LossConfig,
    *,
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    rng: jax.Array | None,
    ref_logp: jax.Array | None = None,
    entropy: jax.Array | None = None,
    states: dict[str, Any] | None = None,
    **fields: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The policy loss of one batch, as configured (the single entry point for direct use).

  Args:
    cfg: the loss config (a static argument under jit).
    logp: `[B, T]` current log-probs ℓ of the sampled tokens (differentiable).
    old_logp: `[B, T]` behaviour log-probs ℓᵒˡᵈ (no gradient).
    advantages: `[B, T]` per-token advantages (no gradient).
    mask: `[B, T]` response mask, 1 on tokens that count.
    rng: PRNG key (Clip-Cov's random pick); may be None for deterministic losses.
    ref_logp: `[B, T]` reference-policy log-probs, or None.
    entropy: `[B, T]` full-vocabulary entropy of the temperature-scaled logits; required when
      `"entropy" in needs(cfg)`, differentiable when an entropy bonus is active.
    states: intervention states by name (default `init_states(cfg)`).
    **fields: other `TokenBatch` fields (`old_entropy`, `group_ids`, `rewards`, `features`,
      ...) that the configured interventions read.

  Returns:
    `(loss, aux)`; `aux` holds `per_token_loss` `[B, T]` (the aggregated per-token PG loss, 0
    where it does not count), `selected` `[B, T]` bool (the intervention's pick; all False if
    none), `clip_frac` (fraction of counted tokens whose clip bound is active), `approx_kl`
    (token mean of k3(ℓ, ℓᵒˡᵈ)), `n_selected`, `n_tokens` (Σ mask), `abs_log_ratio_sum` and
    `selected_abs_log_ratio_sum` (Σ |ℓ − ℓᵒˡᵈ| over the counted and over the picked tokens: the
    off-policy drift, and the part of it a pick such as KL-Cov's acts on), `pg_loss` (the
    aggregated surrogate), `kl_ref` (Agg of the KL estimate to the reference, when `ref_logp`
    is given) and one metric per active regulariser (`entropy_bonus`: `c · Agg(H)`; `siren`:
    Ĥ; ...); a regulariser that is off is not composed and has no key.

  Raises:
    TypeError: for a `config.loss` ConfigDict (convert it once with `resolve_loss_config`).
  """
  if not isinstance(cfg, LossConfig):
    raise TypeError(
        f"policy_loss takes a LossConfig, got {type(cfg).__name__}; convert a config.loss "
        "ConfigDict once with interventions.resolve_loss_config"
    )
  chex.assert_rank(logp, 2)
  arrays = [logp, old_logp, advantages, mask] + [x for x in (ref_logp, entropy) if x is not None]
  chex.assert_equal_shape(arrays)
  if entropy is None and "entropy" in needs(cfg):
    raise ValueError(
        f"loss.name={cfg.name!r} with these loss settings reads the per-token "
        "entropy: pass entropy= to policy_loss"
    )
  batch = TokenBatch(
      logp=logp,
      old_logp=old_logp,
      advantages=advantages,
      mask=mask,
      entropy=entropy,
      ref_logp=ref_logp,
      **fields,
  )
  states = init_states(cfg) if states is None else states
  loss, aux, _ = compute_loss(cfg, batch, states=states, rng=rng, agg=aggregator(cfg))
  return loss, aux


# The rollout side: hooks run on the host by `train/rollout.py`, once per step.


def rollout_interventions(loss_cfg: LossConfig) -> tuple[registry.Intervention, ...]:
  """The active interventions with a rollout side, in registry order."""
  return tuple(
      e
      for e in active(loss_cfg)
      if e.rollout is not None
      or e.samples_per_prompt is not None
      or e.sampling_temperature is not None
      or e.temperature_rule is not None
  )


def changes_temperature(loss_cfg: LossConfig) -> bool:
  """Whether an active intervention samples at another temperature than the configured one."""
  return any(
      e.sampling_temperature is not None or e.temperature_rule is not None
      for e in rollout_interventions(loss_cfg)
  )


def samples_per_prompt(loss_cfg: LossConfig, group_size: int, states: dict[str, Any]) -> int:
  """Responses sampled per prompt before rollout interventions reshape the group."""
  counts = {
      e.name: int(e.samples_per_prompt(loss_cfg, group_size, states.get(e.name)))
      for e in rollout_interventions(loss_cfg)
      if e.samples_per_prompt is not None
  }
  if len(set(counts.values())) > 1:
    raise ValueError(f"rollout interventions ask for different samples per prompt: {counts}")
  return next(iter(counts.values()), group_size)


def sampling_temperature(loss_cfg: LossConfig, states: dict[str, Any]) -> Any:
  """The temperature a rollout intervention chooses for this step's sampling, or None."""
  chosen = [
      e.sampling_temperature(loss_cfg, states.get(e.name))
      for e in rollout_interventions(loss_cfg)
      if e.sampling_temperature is not None
  ]
  if len(chosen) > 1:
    raise ValueError("more than one active intervention chooses the sampling temperature")
  return chosen[0] if chosen else None


def temperature_rule(loss_cfg: LossConfig) -> tuple[Callable | None, str | None]:
  """(the per-token temperature rule, the name of the intervention whose state it reads)."""
  rules = [
      (e.temperature_rule(loss_cfg), e.name)
      for e in rollout_interventions(loss_cfg)
      if e.temperature_rule is not None
  ]
  if len(rules) > 1:
    raise ValueError("more than one active intervention sets a per-token temperature rule")
  return rules[0] if rules else (None, None)


def reshape(loss_cfg: LossConfig, responses: Any, ctx: Any, states: dict[str, Any]) -> Any:
  """Runs every active rollout intervention's `rollout` hook, in order, on the step's scored
  rows (`train.rollout.Responses`, with its `RolloutContext`), and checks the groups.

  Raises:
    ValueError: unless every prompt ends with `ctx.group_size` adjacent rows.
  """
  for entry in rollout_interventions(loss_cfg):
    if entry.rollout is not None:
      responses = entry.rollout(loss_cfg, responses, ctx, states.get(entry.name))
  counts = np.bincount(responses.group_ids)
  if np.any(counts != ctx.group_size) or np.any(np.diff(responses.group_ids) < 0):
    raise ValueError(
        f"after the rollout interventions every prompt must have rl.group_size="
        f"{ctx.group_size} adjacent rows; got {counts.tolist()}"
    )
  return responses
