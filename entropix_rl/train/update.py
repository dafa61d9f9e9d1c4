"""One RL update on a rollout batch, as plain functions; `jit_rl_update` jits `rl_update`.

`rl_update(spec, optimizer, state, batch)` does, in order:

    behaviour pass   old log-probs (and old entropies, reference log-probs, old logit
                     features when asked for) of every row, in row chunks, without gradient
    advantages       the estimator (`rl.advantage`), then the `advantage` interventions
    state hooks      `before_update` of every stateful intervention
    optimizer steps  epochs × mini-batches; each mini-batch's gradient is accumulated over
                     micro-batches of `rl.micro_batch_size` sequences per data shard, or
                     over bins of `rl.micro_batch_tokens` packed tokens (`packing`)
    guard            a mini-batch whose loss or gradient is not finite is not applied: its
                     optimizer update keeps the params and optimizer state as they were,
                     selected inside the update (no copy of the state is kept), as
                     `optax.apply_if_finite` and verl do; when any was skipped,
                     `update/skipped` = 1 and the intervention states stay as they were
                     (the loop stops after `rl.max_skipped_updates` such steps in a row)
    metrics          the losses, the rollout's token covariance, the off-policy drift and
                     (`UpdateSpec.measure_dynamics`, every `rl.dynamics_every` steps) the
                     predicted vs measured entropy change
    state hooks      `after_update`

Gradient accumulation is exact (`interventions.aggregation`): every aggregate keeps the
normalisation of the whole mini-batch. When an active intervention picks tokens from current
values (Clip-Cov, KL-Cov, 80/20, ...) or is non-linear in an aggregate, a no-grad planning pass
over the mini-batch (in `rl.logprob_micro_batch_size` chunks) computes those picks and the
aggregates first; the micro-batches then use them, so the picks equal those of the unsplit
mini-batch. Otherwise the mini-batch's normalisers come from its masks alone and no extra pass
runs. Gradients accumulate in float32 whatever the param dtype. Packed micro-steps give the loss
the rows in their unpacked layout (`_packed_micro_steps`), so the same holds for them.

The batch (`train.rollout.Responses.rl_batch`) holds, for N = `rl.batch_size` responses with
prompt width P and completion width C: `tokens [N, P+C]` int32, `attention_mask [N, P+C]`
bool, `completion [N, C]` int32, `completion_mask [N, C]` float32, `rewards [N]` float32,
`group_ids [N]` int32 (global prompt index), and when asked for `cluster_ids [N]`, `step_ids
[N, C]` (else computed from `rl.step_delimiter`), `info` (rollout interventions' per-row
arrays), and `old_logp`, `old_entropy [N, C]` (`rl.old_logp_from_rollout`).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from entropix_rl import advantages, dynamics, interventions, packing, sharding, token_stats
from entropix_rl.interventions.aggregation import aggregator, masked_mean
from entropix_rl.interventions.batch import step_ids_from_tokens
from entropix_rl.interventions.compose import TOKEN_AUX
from entropix_rl.interventions.registry import TokenFeature
from entropix_rl.models import ModelConfig, forward_hidden, unembedding
from entropix_rl.train.config import Experiment, RLConfig
from entropix_rl.train.state import TrainState

Rows = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class UpdateSpec:
  """The static settings of one RL update (hashable: `jit` specialises on them).

  Attributes:
    model: the policy's config.
    rl: `config.rl` (batch sizes, estimator, chunking, micro-batches, what to measure).
    loss: the resolved loss config (the interventions).
    temperature: the rollout temperature; log-probs and entropies use logits / temperature.
    step_delimiter_id: the token id that ends a step of a response, or −1 (`rl.step_delimiter`).
    measure_dynamics: also measure the predicted and actual entropy change of the update
      (`dynamics/*`; the trainer compiles both variants and measures every
      `rl.dynamics_every` steps).
  """

  model: ModelConfig
  rl: RLConfig
  loss: interventions.LossConfig
  temperature: float = 1.0
  step_delimiter_id: int = -1
  measure_dynamics: bool = False

  @classmethod
  def of(cls, exp: Experiment, *, measure_dynamics: bool = False) -> UpdateSpec:
    """The update of a resolved experiment."""
    return cls(
        model=exp.model,
        rl=exp.config.rl,
        loss=exp.loss,
        temperature=exp.sampler.temperature,
        step_delimiter_id=exp.step_delimiter_id,
        measure_dynamics=measure_dynamics,
    )


def jit_rl_update(
    spec: UpdateSpec,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    state_sharding: Any = None,
) -> Callable[[TrainState, Rows], tuple[TrainState, dict]]:
  """`rl_update` jitted, the state donated. On a `mesh` the state has `state_sharding`
  (`sharding.state_shardings`) and the batch's rows lie over data x fsdp.

  Raises:
    ValueError: when the mini-batch or its micro-batches do not split over the mesh.
  """
  spec.rl.check_shards(sharding.batch_shards(mesh))
  update = functools.partial(rl_update, spec, optimizer, mesh=mesh)
  return sharding.jit_train_step(update, mesh, state_sharding)


def rl_update(
    spec: UpdateSpec,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    batch: Rows,
    *,
    mesh: Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One RL update (module docstring): returns the new state and the step's metrics."""
  batch = jax.tree.map(jnp.asarray, batch)  # host arrays too, when called without jit
  rng, shuffle_key, loss_key = jax.random.split(state.rng, 3)
  mask = batch["completion_mask"].astype(jnp.float32)
  rows = dict(
      batch,
      response_ids=jnp.arange(spec.rl.batch_size, dtype=jnp.int32),
      **behaviour_pass(spec, state, batch, mesh=mesh),
  )
  if "step_ids" in interventions.needs(spec.loss) and "step_ids" not in batch:
    rows["step_ids"] = step_ids_from_tokens(batch["completion"], spec.step_delimiter_id)
  sequence_advantages = advantages.compute_advantages(
      spec.rl.advantage, batch["rewards"], batch["group_ids"], spec.rl.prompts_per_step
  )
  rows["advantages"] = sequence_advantages[:, None] * mask
  rollout = token_batch(rows, {"logp": rows["old_logp"], "entropy": rows["old_entropy"]})
  states, metrics = interventions.before_update(spec.loss, state.interventions, rollout)
  rows["advantages"] = interventions.rollout_advantages(spec.loss, rollout, states) * mask
  rollout = rollout.replace(advantages=rows["advantages"])
  (params, opt_state), per_minibatch = optimizer_steps(
      spec, optimizer, state, rows, states, shuffle_key, loss_key, mesh=mesh
  )
  applied = per_minibatch.pop("applied")
  finite = applied.all()
  metrics["update/skipped"] = 1.0 - finite.astype(jnp.float32)
  metrics["update/skipped_fraction"] = 1.0 - applied.mean()
  metrics.update(loss_metrics(per_minibatch))
  metrics.update(behaviour_metrics(spec, rows, mask))
  if spec.measure_dynamics:
    metrics.update(entropy_change(spec, state.params, params, batch, mask, mesh=mesh))
  states, after = interventions.after_update(spec.loss, states, rollout)
  metrics.update(after)
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      rng=rng,
      interventions=_keep_if_not(finite, states, state.interventions),
  )
  return new_state, metrics


def completion_hidden(
    model_cfg: ModelConfig, params: Any, rows: Rows, *, remat: bool = False
) -> jax.Array:
  """Hidden states that predict each completion token: `[R, C, D]` of rows, or `[S, B, D]` of
  one step's packed bins (every slot; `packing.unpack` keeps those that predict a completion
  token).

  Args:
    rows: `tokens [R, P+C]` (left-padded prompt then completion), `attention_mask [R, P+C]`,
      `completion [R, C]`; or packed bins (`packing.pack`): `tokens`, `segment_ids`,
      `positions`, `targets`, each `[S, B]`.
  """
  if "segment_ids" in rows:
    hidden, _ = forward_hidden(
        model_cfg,
        params,
        rows["tokens"],
        positions=rows["positions"],
        segment_ids=rows["segment_ids"],
        remat=remat,
    )
    return hidden
  prompt_len = rows["tokens"].shape[1] - rows["completion"].shape[1]
  hidden, _ = forward_hidden(
      model_cfg, params, rows["tokens"], mask=rows["attention_mask"], remat=remat
  )
  return hidden[:, prompt_len - 1 : -1]


def predicted_tokens(rows: Rows) -> jax.Array:
  """The tokens `completion_hidden` predicts: `completion` of rows, `targets` of bins."""
  return rows["targets"] if "segment_ids" in rows else rows["completion"]


def completion_quantities(
    model_cfg: ModelConfig,
    params: Any,
    rows: Rows,
    *,
    temperature: float,
    token_chunk: int,
    with_entropy: bool,
    features: tuple[TokenFeature, ...] = (),
    feature_chunk: int = 256,
    remat: bool = False,
) -> dict[str, Any]:
  """Teacher-forced log-probs, entropies and logit features of the completion tokens (of
  rows or of packed bins, as `completion_hidden`).

  Returns:
    `{"logp": [R, C], "entropy": [R, C] or None, "features": {name: [R, C]}}`, float32, at
    the rollout temperature (logits / T); `[S, B]` each for bins.
  """
  hidden = completion_hidden(model_cfg, params, rows, remat=remat)
  unembed = unembedding(model_cfg, params)
  targets = predicted_tokens(rows)
  logp, entropy = token_stats.token_logp_entropy(
      hidden,
      unembed,
      targets,
      temperature=temperature,
      token_chunk=token_chunk,
      with_entropy=with_entropy,
  )
  values = token_stats.logit_features(
      hidden,
      unembed,
      targets,
      tuple(f.fn for f in features),
      temperature=temperature,
      token_chunk=feature_chunk,
  )
  return {
      "logp": logp,
      "entropy": entropy if with_entropy else None,
      "features": {f.name: v for f, v in zip(features, values)},
  }


def behaviour_pass(
    spec: UpdateSpec, state: TrainState, batch: Rows, *, mesh: Mesh | None = None
) -> Rows:
  """Old log-probs (+ old entropies, old features, reference log-probs) of every row, without
  gradient; with `rl.old_logp_from_rollout` the sampler's log-probs and entropies stand in for
  the first two."""
  from_rollout = spec.rl.old_logp_from_rollout
  old_features = interventions.features(spec.loss, "old")
  recompute = not from_rollout or bool(old_features)
  with_entropy = not from_rollout and (
      "old_entropy" in interventions.needs(spec.loss) or spec.measure_dynamics
  )

  def rows_fn(rows: Rows) -> Rows:
    out = {}
    if recompute:
      old = _quantities(spec, state.params, rows, with_entropy, old_features)
      out["old_features"] = old["features"]
      if not from_rollout:
        out.update(old_logp=old["logp"], old_entropy=old["entropy"])
    if state.ref_params is not None:
      out["ref_logp"] = _quantities(spec, state.ref_params, rows, False, ())["logp"]
    return out

  needed = recompute or state.ref_params is not None
  out = _no_grad_chunks(spec, rows_fn, batch, mesh) if needed else {}
  if from_rollout:
    out.update(old_logp=batch["old_logp"], old_entropy=batch["old_entropy"])
  return out


def optimizer_steps(
    spec: UpdateSpec,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    rows: Rows,
    states: dict[str, Any],
    shuffle_key: jax.Array,
    loss_key: jax.Array,
    *,
    mesh: Mesh | None = None,
) -> tuple[tuple[Any, Any], dict[str, jax.Array]]:
  """`rl.ppo_epochs × rl.num_minibatches` optimizer updates, the rows shuffled each epoch.

  An update whose loss or gradient norm is not finite is not applied (`_keep_if_not`, fused
  into the optimizer's elementwise update, so the state is never held twice).

  Returns:
    `((params, opt_state), per-mini-batch metrics [updates])`: `loss`, `grad_norm`, `applied`
    (bool: finite, so applied) and the loss's aux scalars.
  """
  n = spec.rl.batch_size
  perms = jax.vmap(lambda k: jax.random.permutation(k, n))(
      jax.random.split(shuffle_key, spec.rl.ppo_epochs)
  )
  order = perms.reshape(spec.rl.updates_per_step, spec.rl.minibatch_size)
  loss_keys = jax.random.split(loss_key, spec.rl.updates_per_step)

  def step(carry, xs):
    params, opt_state = carry
    picked, key = xs
    minibatch = sharding.constrain_rows(jax.tree.map(lambda x: x[picked], rows), mesh)
    loss, aux, grads = minibatch_gradient(spec, params, minibatch, key, states, mesh=mesh)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new = (optax.apply_updates(params, updates), new_opt_state)
    carry = _keep_if_not(finite, new, (params, opt_state))
    return carry, dict(aux, loss=loss, grad_norm=grad_norm, applied=finite)

  return jax.lax.scan(step, (state.params, state.opt_state), (order, loss_keys))


def minibatch_gradient(
    spec: UpdateSpec,
    params: Any,
    rows: Rows,
    key: jax.Array,
    states: dict[str, Any],
    *,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, dict[str, jax.Array], Any]:
  """`(loss, aux scalars, grads)` of one mini-batch, accumulated over its micro-batches (of
  `rl.micro_batch_size` rows, or of `rl.micro_batch_tokens` packed tokens) with the
  normalisers (and, with a planning pass, the picks) of the whole mini-batch."""
  shards = sharding.batch_shards(mesh)
  micro = spec.rl.micro_batch_size
  pieces = spec.rl.minibatch_size // (shards * micro) if micro else 1
  packed = bool(spec.rl.micro_batch_tokens)
  agg = aggregator(spec.loss)
  gradient = jax.value_and_grad(_loss_at, argnums=1, has_aux=True)
  if pieces == 1 and not packed:
    (loss, (aux, _)), grads = gradient(spec, params, rows, key, states, agg)
    return loss, aux, grads
  planning = interventions.needs_planning_pass(spec.loss)
  if planning:  # current values of the whole mini-batch, without gradient: picks and values
    now = _no_grad_chunks(spec, lambda r: _current(spec, params, r, remat=False), rows, mesh)
    loss, (aux, stats) = _loss(spec, rows, now, key, states, agg)
  else:  # the normalisers come from the masks (any values stand in for the current ones)
    _loss(spec, rows, _stand_in(spec, rows), key, states, agg)
    stats = {}
  micro_agg = lambda: aggregator(spec.loss, "replay" if planning else "share", agg.records)
  if packed:
    grads, total, shares = _packed_micro_steps(
        spec, params, rows, key, states, micro_agg, stats, mesh
    )
  else:
    grads, total, shares = _row_micro_steps(
        spec, params, rows, key, states, micro_agg, stats, pieces, mesh
    )
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
  if not planning:  # every aggregate's shares add up to the mini-batch value
    loss, aux = total, shares
  return loss, aux, grads


Sums = tuple[Any, jax.Array, dict[str, jax.Array]]


def _row_micro_steps(
    spec: UpdateSpec,
    params: Any,
    rows: Rows,
    key: jax.Array,
    states: dict[str, Any],
    micro_agg: Callable[[], Any],
    stats: Any,
    pieces: int,
    mesh: Mesh | None,
) -> Sums:
  """Float32 gradient, loss and aux sums over `pieces` micro-batches of rows (`lax.scan`)."""
  gradient = jax.value_and_grad(_loss_at, argnums=1, has_aux=True)

  def micro_step(carry, xs):
    grads, total = carry
    micro_rows, micro_stats = xs
    micro_rows = sharding.constrain_rows(micro_rows, mesh)
    (value, (scalars, _)), g = gradient(
        spec, params, micro_rows, key, states, micro_agg(), micro_stats
    )
    grads = jax.tree.map(lambda acc, x: acc + x.astype(jnp.float32), grads, g)
    return (grads, total + value), scalars

  split = sharding.split_rows((rows, stats), pieces, sharding.batch_shards(mesh))
  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  (grads, total), shares = jax.lax.scan(micro_step, (zeros, jnp.float32(0)), split)
  return grads, total, jax.tree.map(lambda x: x.sum(axis=0), shares)


def _packed_micro_steps(
    spec: UpdateSpec,
    params: Any,
    rows: Rows,
    key: jax.Array,
    states: dict[str, Any],
    micro_agg: Callable[[], Any],
    stats: Any,
    mesh: Mesh | None,
) -> Sums:
  """Float32 gradient, loss and aux sums over the packed micro-steps (`entropix_rl.packing`).

  Step k runs the forward and backward pass on bin k of every data shard; its loss is the
  mini-batch's loss with the mask of the rows outside those bins zeroed and, there, stand-in
  values (the old log-probs, zero entropies and features): the rows keep their unpacked
  layout, so every aggregate and every pick is that of the unpacked update.
  """
  mask = rows["attention_mask"].astype(bool)
  plan = packing.plan_packing(
      mask, spec.rl.micro_batch_tokens, sharding.batch_shards(mesh), "rl.micro_batch_tokens"
  )
  bins = sharding.constrain_rows(packing.pack(plan, rows["tokens"], mask), mesh)
  stand_in = _stand_in(spec, rows)

  def step_loss(params, k):
    view = sharding.constrain_rows(packing.step_bins(bins, k), mesh)
    values = _current(spec, params, view, remat=spec.rl.remat)
    current = jax.tree.map(lambda v, f: packing.unpack(plan, v, k, mask, f), values, stand_in)
    here = (plan.bin == k).astype(jnp.float32)[:, None]
    step_rows = dict(rows, completion_mask=rows["completion_mask"] * here)
    return _loss(spec, step_rows, current, key, states, micro_agg(), stats)

  def micro_step(k, carry):
    grads, total, sums = carry
    (value, (scalars, _)), g = jax.value_and_grad(step_loss, has_aux=True)(params, k)
    add = lambda acc, x: acc + x.astype(jnp.float32)
    return jax.tree.map(add, grads, g), total + value, jax.tree.map(add, sums, scalars)

  scalars = jax.eval_shape(lambda: step_loss(params, 0)[1][0])
  zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), tree)
  init = (zeros(params), jnp.float32(0), zeros(scalars))
  return jax.lax.fori_loop(0, plan.steps, micro_step, init)


def token_batch(rows: Rows, current: Rows) -> interventions.TokenBatch:
  """The loss inputs of some rows: current values from `current`, the rest from the rollout."""
  return interventions.TokenBatch(
      logp=current["logp"],
      old_logp=rows["old_logp"],
      advantages=rows["advantages"],
      mask=rows["completion_mask"],
      entropy=current.get("entropy"),
      old_entropy=rows.get("old_entropy"),
      ref_logp=rows.get("ref_logp"),
      group_ids=rows["group_ids"],
      response_ids=rows["response_ids"],
      rewards=rows["rewards"],
      step_ids=rows.get("step_ids"),
      cluster_ids=rows.get("cluster_ids"),
      features=current.get("features", {}),
      old_features=rows.get("old_features", {}),
      info=rows.get("info", {}),
  )


def loss_metrics(per_minibatch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """`loss/*`: each per-mini-batch scalar's mean, the picked-token total, and the mean
  |ℓ − ℓᵒˡᵈ| over the mini-batches after the first (which is exactly on-policy): how far the
  policy has moved when the later mini-batches are taken, over all tokens
  (`loss/off_policy_abs_log_ratio`) and over the ones a penalty such as KL-Cov's acts on
  (`loss/selected_abs_log_ratio`); 0 with one mini-batch or no pick."""
  per_minibatch = dict(per_minibatch)
  drift = per_minibatch.pop("abs_log_ratio_sum")
  selected_drift = per_minibatch.pop("selected_abs_log_ratio_sum")
  out = {f"loss/{k}": v.mean() for k, v in per_minibatch.items()}
  out["loss/n_selected_total"] = per_minibatch["n_selected"].sum()
  later = slice(1, None)
  tokens, selected = per_minibatch["n_tokens"][later], per_minibatch["n_selected"][later]
  out["loss/off_policy_abs_log_ratio"] = drift[later].sum() / jnp.maximum(tokens.sum(), 1)
  out["loss/selected_abs_log_ratio"] = selected_drift[later].sum() / jnp.maximum(selected.sum(), 1)
  return out


def behaviour_metrics(spec: UpdateSpec, rows: Rows, mask: jax.Array) -> dict[str, jax.Array]:
  """The rollout's advantages and token covariance (`cov/*`, the paper's Cov(ℓ, A)), and the
  behaviour policy's entropy and sampled-token NLL."""
  out = {"advantage/mean_abs": masked_mean(jnp.abs(rows["advantages"]), mask)}
  out.update(dynamics.covariance_metrics(rows["old_logp"], rows["advantages"], mask))
  _, out["cov/response_mean"] = dynamics.response_covariance(
      rows["old_logp"], rows["advantages"], mask, rows["group_ids"], spec.rl.prompts_per_step
  )
  if spec.measure_dynamics:
    out["entropy/recomputed_token_mean"] = masked_mean(rows["old_entropy"], mask)
  out["entropy/sampled_nll"] = masked_mean(-rows["old_logp"], mask)
  return out


def entropy_change(
    spec: UpdateSpec,
    old_params: Any,
    new_params: Any,
    batch: Rows,
    mask: jax.Array,
    *,
    mesh: Mesh | None = None,
) -> dict[str, jax.Array]:
  """Predicted (first order, Lemma 1 of Cui et al. 2025) and measured entropy change per token
  of the whole update, in row chunks (`dynamics.entropy_change_from_hidden`)."""

  def rows_fn(rows: Rows) -> Rows:
    before = completion_hidden(spec.model, old_params, rows)
    after = completion_hidden(spec.model, new_params, rows)
    predicted, measured = dynamics.entropy_change_from_hidden(
        before,
        unembedding(spec.model, old_params),
        after,
        unembedding(spec.model, new_params),
        temperature=spec.temperature,
        token_chunk=spec.rl.token_chunk,
    )
    return {"predicted": predicted, "measured": measured}

  change = _no_grad_chunks(spec, rows_fn, batch, mesh)
  return {
      "dynamics/predicted_entropy_change": masked_mean(change["predicted"], mask),
      "dynamics/measured_entropy_change": masked_mean(change["measured"], mask),
  }


def _quantities(
    spec: UpdateSpec,
    params: Any,
    rows: Rows,
    with_entropy: bool,
    features: tuple[TokenFeature, ...],
    remat: bool = False,
) -> dict[str, Any]:
  return completion_quantities(
      spec.model,
      params,
      rows,
      temperature=spec.temperature,
      token_chunk=spec.rl.token_chunk,
      with_entropy=with_entropy,
      features=features,
      feature_chunk=spec.rl.feature_chunk,
      remat=remat,
  )


def _current(spec: UpdateSpec, params: Any, rows: Rows, *, remat: bool) -> dict[str, Any]:
  """The current policy's values the loss reads (its log-probs, and entropies and logit
  features where an active intervention reads them)."""
  with_entropy = "entropy" in interventions.needs(spec.loss)
  return _quantities(
      spec, params, rows, with_entropy, interventions.features(spec.loss, "current"), remat
  )


def _stand_in(spec: UpdateSpec, rows: Rows) -> dict[str, Any]:
  """Values of the current policy's shape (the tree `_current` returns), for a pass that only
  records the normalisers and for the rows a packed micro-step does not compute."""
  zeros = jnp.zeros_like(rows["old_logp"])
  return {
      "logp": rows["old_logp"],
      "entropy": zeros if "entropy" in interventions.needs(spec.loss) else None,
      "features": {f.name: zeros for f in interventions.features(spec.loss, "current")},
  }


def _loss(
    spec: UpdateSpec,
    rows: Rows,
    current: Rows,
    key: jax.Array,
    states: dict[str, Any],
    agg: Any,
    stats: Any = None,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
  """The loss of some rows at the given current values: `(loss, (aux scalars, stats))`."""
  loss, aux, stats = interventions.compute_loss(
      spec.loss, token_batch(rows, current), states=states, rng=key, agg=agg, stats=stats
  )
  return loss, ({k: v for k, v in aux.items() if k not in TOKEN_AUX}, stats)


def _loss_at(spec: UpdateSpec, params: Any, rows: Rows, *args: Any) -> Any:
  """`_loss` at `params` (what the gradient differentiates)."""
  return _loss(spec, rows, _current(spec, params, rows, remat=spec.rl.remat), *args)


def _no_grad_chunks(spec: UpdateSpec, fn: Callable[[Rows], Rows], rows: Rows, mesh: Mesh | None):
  """`fn` over row chunks of `rl.logprob_micro_batch_size`, or over packed bins of
  `rl.logprob_micro_batch_tokens`, without gradient."""
  if spec.rl.logprob_micro_batch_tokens:
    out = packing.map_packed(
        fn,
        rows,
        budget=spec.rl.logprob_micro_batch_tokens,
        what="rl.logprob_micro_batch_tokens",
        mesh=mesh,
    )
  else:
    out = sharding.map_row_chunks(fn, rows, chunk_rows=spec.rl.logprob_micro_batch_size, mesh=mesh)
  return jax.lax.stop_gradient(out)


def _keep_if_not(finite: jax.Array, new: Any, old: Any) -> Any:
  """`new` when `finite`, else `old`, leaf by leaf (a skipped update leaves the state as it was)."""
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
