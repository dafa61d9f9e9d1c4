"""One RL update on a rollout batch, as one jitted function.

    behaviour pass   old log-probs (and old entropies, reference log-probs, old logit
                     features when asked for), in row chunks, without gradient
    advantages       the estimator (`rl.advantage`), then the `advantage` interventions
    state hooks      `before_update` of every stateful intervention
    epochs x mini-batches of optimizer updates; each mini-batch's gradient is accumulated over
                     micro-batches of `rl.micro_batch_size` sequences per device
    dynamics         predicted vs measured entropy change of the whole update (optional)
    state hooks      `after_update`
    guard            if any mini-batch's loss or gradient is not finite, the params, the
                     optimizer state and the intervention states stay as they were
                     (`update/skipped` = 1; the trainer stops after `rl.max_skipped_updates`
                     skipped steps in a row)

Gradient accumulation is exact (`interventions.aggregation`): every aggregate keeps the
normalisation of the whole mini-batch. When an active intervention picks tokens from current
values (Clip-Cov, KL-Cov, 80/20, ...) or is non-linear in an aggregate, a no-grad pass over the
mini-batch (in `rl.logprob_micro_batch_size` chunks) computes those picks and the aggregates
first; the accumulation pass then uses them, so the picks equal those of the unsplit
mini-batch. Otherwise the mini-batch's normalisers come from its masks alone and no extra
pass runs. Gradients accumulate in float32 whatever the param dtype.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from entropix_rl import advantages as advantages_lib
from entropix_rl import dynamics, interventions, sharding
from entropix_rl.interventions.aggregation import aggregator, masked_mean
from entropix_rl.interventions.batch import step_ids_from_tokens
from entropix_rl.models import ModelConfig, unembedding
from entropix_rl.train import passes
from entropix_rl.train.state import TrainState

ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")


@dataclasses.dataclass(frozen=True)
class RLUpdateConfig:
  """Static settings of one RL update.

  Attributes:
    num_groups: prompts per update (G); the batch holds G × group_size responses.
    group_size: responses per prompt.
    ppo_epochs: passes over the rollout batch.
    num_minibatches: optimizer updates per epoch; rows are shuffled each epoch.
    advantage: estimator name (`ADVANTAGE_ESTIMATORS`).
    temperature: rollout temperature; log-probs and entropies use logits / temperature.
    token_chunk: tokens per chunk in the chunked log-prob/entropy computation.
    remat: rematerialise decoder layers in the backward pass.
    measure_dynamics: also measure predicted vs actual entropy change (two no-grad forwards
      per row chunk after the update).
    micro_batch_size: sequences per data shard in one forward/backward (verl's
      `ppo_micro_batch_size_per_gpu`); 0 = the whole mini-batch at once.
    logprob_micro_batch_size: sequences per data shard in one chunk of the no-grad passes
      (verl's `log_prob_micro_batch_size_per_gpu`); 0 = all rows at once.
    feature_chunk: tokens per chunk when an intervention's logit features need full logits.
    step_delimiter_id: the token id that ends a step of a response (`rl.step_delimiter`), or
      −1: every response is one step. Read only when an intervention needs `step_ids`.
    old_logp_from_rollout: take the old log-probs and entropies from the batch (the
      sampler's, `old_logp` and `old_entropy` `[N, C]`) instead of recomputing them with a
      forward pass. Exact only when the rollout is on-policy at the training temperature
      (same params, one temperature); the two differ by float round-off
      (docs/performance.md gives the measured difference).
  """

  num_groups: int
  group_size: int
  ppo_epochs: int = 1
  num_minibatches: int = 1
  advantage: str = "grpo"
  temperature: float = 1.0
  token_chunk: int = 2048
  remat: bool = False
  measure_dynamics: bool = True
  micro_batch_size: int = 0
  logprob_micro_batch_size: int = 0
  feature_chunk: int = 256
  step_delimiter_id: int = -1
  old_logp_from_rollout: bool = False

  def __post_init__(self):
    if self.advantage not in ADVANTAGE_ESTIMATORS:
      raise ValueError(f"rl.advantage={self.advantage!r}; allowed: {ADVANTAGE_ESTIMATORS}")
    if self.group_size < 1 or self.num_groups < 1:
      raise ValueError(
          f"rl.group_size={self.group_size} and rl.prompts_per_step={self.num_groups} "
          "must be >= 1"
      )
    if self.advantage in ("grpo", "rloo") and self.group_size == 1:
      raise ValueError(
          f"rl.group_size=1 with rl.advantage={self.advantage!r}: group statistics "
          "need at least 2 samples per prompt; use group_size >= 2"
      )
    if self.ppo_epochs < 1:
      raise ValueError(f"rl.ppo_epochs={self.ppo_epochs} must be >= 1")
    if self.num_minibatches < 1 or self.batch_size % self.num_minibatches:
      raise ValueError(
          f"rl.num_minibatches={self.num_minibatches} must divide the batch of "
          f"{self.batch_size} responses"
      )
    if self.temperature <= 0:
      raise ValueError(f"sampler.temperature={self.temperature} must be > 0 for RL")
    for name in ("micro_batch_size", "logprob_micro_batch_size"):
      if getattr(self, name) < 0:
        raise ValueError(f"rl.{name}={getattr(self, name)} must be >= 0 (0 = no splitting)")
    if self.feature_chunk < 1:
      raise ValueError(f"rl.feature_chunk={self.feature_chunk} must be >= 1")
    if self.step_delimiter_id < -1:
      raise ValueError(
          f"step_delimiter_id={self.step_delimiter_id}; allowed: a token id >= 0, "
          "or -1 (no delimiter)"
      )

  @property
  def batch_size(self) -> int:
    return self.num_groups * self.group_size

  @property
  def minibatch_size(self) -> int:
    return self.batch_size // self.num_minibatches

  def check_shards(self, shards: int) -> None:
    """Raises ValueError unless the batch, mini-batch and chunks split evenly over `shards`."""
    rows = self.minibatch_size
    if rows % shards:
      raise ValueError(
          f"the mini-batch of {rows} responses (rl.prompts_per_step x rl.group_size "
          f"/ rl.num_minibatches) must divide by the mesh's data x fsdp = {shards}"
      )
    for name, size, total in (
        ("micro_batch_size", self.micro_batch_size, rows),
        ("logprob_micro_batch_size", self.logprob_micro_batch_size, rows),
    ):
      if size and (total // shards) % size:
        raise ValueError(
            f"rl.{name}={size} must divide the {total // shards} responses per data "
            f"shard of a mini-batch ({total} over {shards} shards)"
        )


def _token_batch(rows: dict, current: dict) -> interventions.TokenBatch:
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


def _off_policy_drift(
    drift: jax.Array, selected_drift: jax.Array, n_tokens: jax.Array, n_selected: jax.Array
) -> dict[str, jax.Array]:
  """Mean |ℓ − ℓᵒˡᵈ| over the mini-batches after the first (which is exactly on-policy).

  Args:
    drift, selected_drift: `[M]` per-mini-batch sums of |ℓ − ℓᵒˡᵈ| over the counted tokens and
      over the intervention's picked tokens.
    n_tokens, n_selected: `[M]` the matching token counts.

  Returns:
    `loss/off_policy_abs_log_ratio` and `loss/selected_abs_log_ratio` (0 with one mini-batch or
    no pick): how far the policy has moved from the rollout's when the later mini-batches are
    taken, over all tokens and over the ones a penalty such as KL-Cov's acts on.
  """
  later = slice(1, None)
  return {
      "loss/off_policy_abs_log_ratio": drift[later].sum() / jnp.maximum(n_tokens[later].sum(), 1),
      "loss/selected_abs_log_ratio": selected_drift[later].sum()
      / jnp.maximum(n_selected[later].sum(), 1),
  }


def _keep_if_not(finite: jax.Array, new: Any, old: Any) -> Any:
  """`new` when `finite`, else `old`, leaf by leaf (a skipped update leaves the state as it was)."""
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


def make_rl_update(
    model_cfg: ModelConfig,
    rl_cfg: RLUpdateConfig,
    loss_cfg: Any,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    state_sharding: Any = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Builds the jitted `rl_update(state, batch) -> (state, metrics)` (module docstring).

  `batch` holds, for N = rl_cfg.batch_size responses with prompt length P and completion
  length C: `tokens [N, P+C]` int32, `attention_mask [N, P+C]` bool, `completion [N, C]`
  int32, `completion_mask [N, C]` float32, `rewards [N]` float32, `group_ids [N]` int32, and
  `cluster_ids [N]` int32 when an intervention reads it. `step_ids [N, C]` is computed here from
  the completion tokens and `rl_cfg.step_delimiter_id` when an intervention reads it (unless
  the batch brings its own). Old log-probs are recomputed here with the pre-update params (so
  the first mini-batch is exactly on-policy), as are reference log-probs when
  `state.ref_params` is set.

  On a `mesh`, the function is jitted with `state_sharding` for the state and rows over
  data x fsdp for the batch, and every chunk keeps its rows on their devices.
  """
  loss_cfg = interventions.resolve_loss_config(loss_cfg)
  shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  rl_cfg.check_shards(shards)
  needs = interventions.needs(loss_cfg)
  old_features = interventions.features(loss_cfg, "old")
  current_features = interventions.features(loss_cfg, "current")
  micro = rl_cfg.micro_batch_size
  pieces = rl_cfg.minibatch_size // (shards * micro) if micro else 1
  planning = pieces > 1 and interventions.needs_planning_pass(loss_cfg)

  def quantities(params, rows, *, entropy, features, remat=False):
    return passes.completion_quantities(
        model_cfg,
        params,
        rows,
        temperature=rl_cfg.temperature,
        token_chunk=rl_cfg.token_chunk,
        with_entropy=entropy,
        features=features,
        feature_chunk=rl_cfg.feature_chunk,
        remat=remat,
    )

  def no_grad_chunks(fn, rows):
    return jax.lax.stop_gradient(
        passes.map_row_chunks(
            fn, rows, chunk_rows=rl_cfg.logprob_micro_batch_size, shards=shards, mesh=mesh
        )
    )

  def behaviour_pass(state: TrainState, batch: dict) -> dict:
    """Old log-probs (+ old entropy, old features, reference log-probs) of every row; with
    `old_logp_from_rollout` the sampler's log-probs and entropies stand in for the first two."""
    from_rollout = rl_cfg.old_logp_from_rollout
    recompute = not from_rollout or bool(old_features)

    def rows_fn(rows):
      out = {}
      if recompute:
        old = quantities(
            state.params,
            rows,
            features=old_features,
            entropy=not from_rollout and ("old_entropy" in needs or rl_cfg.measure_dynamics),
        )
        out["old_features"] = old["features"]
        if not from_rollout:
          out.update(old_logp=old["logp"], old_entropy=old["entropy"])
      if state.ref_params is not None:
        out["ref_logp"] = quantities(state.ref_params, rows, entropy=False, features=())["logp"]
      return out

    out = no_grad_chunks(rows_fn, batch) if recompute or state.ref_params is not None else {}
    if from_rollout:
      out.update(old_logp=batch["old_logp"], old_entropy=batch["old_entropy"])
    return out

  def current(params, rows, remat):
    return quantities(
        params, rows, entropy="entropy" in needs, features=current_features, remat=remat
    )

  def loss_on(params, rows, key, states, agg, stats=None):
    loss, aux, stats = interventions.compute_loss(
        loss_cfg,
        _token_batch(rows, current(params, rows, rl_cfg.remat)),
        states=states,
        rng=key,
        agg=agg,
        stats=stats,
    )
    return loss, (aux, stats)

  def minibatch_gradient(params, rows, key, states):
    """`(loss, aux, grads)` of one mini-batch, accumulated over micro-batches."""
    if pieces == 1:
      agg = aggregator(loss_cfg)
      (loss, (aux, _)), grads = jax.value_and_grad(loss_on, has_aux=True)(
          params, rows, key, states, agg
      )
      return loss, {k: v for k, v in aux.items() if k not in ("per_token_loss", "selected")}, grads
    agg = aggregator(loss_cfg)
    if planning:  # current values of the whole mini-batch, without gradient: picks and values
      now = no_grad_chunks(lambda r: current(params, r, False), rows)
      loss, aux, stats = interventions.compute_loss(
          loss_cfg, _token_batch(rows, now), states=states, rng=key, agg=agg
      )
    else:  # normalisers from the masks (values stand in for the current ones)
      stand_in = {
          "logp": rows["old_logp"],
          "features": {f.name: jnp.zeros_like(rows["old_logp"]) for f in current_features},
      }
      if "entropy" in needs:
        stand_in["entropy"] = jnp.zeros_like(rows["old_logp"])
      interventions.compute_loss(
          loss_cfg, _token_batch(rows, stand_in), states=states, rng=key, agg=agg
      )
      stats = {}
    mode = "replay" if planning else "share"

    def micro_step(carry, xs):
      grads, total = carry
      micro_rows, micro_stats = xs
      micro_agg = aggregator(loss_cfg, mode, agg.records)
      (loss, (aux, _)), g = jax.value_and_grad(loss_on, has_aux=True)(
          params, passes.constrain_rows(micro_rows, mesh), key, states, micro_agg, micro_stats
      )
      scalars = {k: v for k, v in aux.items() if k not in ("per_token_loss", "selected")}
      grads = jax.tree.map(lambda acc, x: acc + x.astype(jnp.float32), grads, g)
      return (grads, total + loss), scalars

    split = passes.split_rows((rows, stats), pieces, shards)
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (grads, total), shares = jax.lax.scan(micro_step, (zeros, jnp.float32(0)), split)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    if not planning:  # every aggregate's shares add up to the mini-batch value
      loss, aux = total, jax.tree.map(lambda x: x.sum(axis=0), shares)
    return loss, {k: v for k, v in aux.items() if k not in ("per_token_loss", "selected")}, grads

  def update(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng, shuffle_key, loss_key = jax.random.split(state.rng, 3)
    mask = batch["completion_mask"].astype(jnp.float32)
    n = rl_cfg.batch_size
    data = dict(batch, response_ids=jnp.arange(n, dtype=jnp.int32), **behaviour_pass(state, batch))
    if "step_ids" in needs and "step_ids" not in batch:
      data["step_ids"] = step_ids_from_tokens(batch["completion"], rl_cfg.step_delimiter_id)
    seq_adv = advantages_lib.compute_advantages(
        rl_cfg.advantage, batch["rewards"], batch["group_ids"], rl_cfg.num_groups
    )
    data["advantages"] = seq_adv[:, None] * mask
    rollout = _token_batch(data, {"logp": data["old_logp"], "entropy": data["old_entropy"]})
    states, metrics = interventions.before_update(loss_cfg, state.interventions, rollout)
    data["advantages"] = interventions.rollout_advantages(loss_cfg, rollout, states) * mask
    rollout = rollout.replace(advantages=data["advantages"])

    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(
        jax.random.split(shuffle_key, rl_cfg.ppo_epochs)
    )
    order = perms.reshape(rl_cfg.ppo_epochs * rl_cfg.num_minibatches, rl_cfg.minibatch_size)
    loss_keys = jax.random.split(loss_key, order.shape[0])

    def minibatch_step(carry, xs):
      params, opt_state = carry
      rows, key = xs
      minibatch = passes.constrain_rows(jax.tree.map(lambda x: x[rows], data), mesh)
      loss, aux, grads = minibatch_gradient(params, minibatch, key, states)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), dict(aux, loss=loss, grad_norm=optax.global_norm(grads))

    (params, opt_state), per_mb = jax.lax.scan(
        minibatch_step, (state.params, state.opt_state), (order, loss_keys)
    )
    finite = jnp.isfinite(per_mb["loss"]).all() & jnp.isfinite(per_mb["grad_norm"]).all()
    params, opt_state = _keep_if_not(finite, (params, opt_state), (state.params, state.opt_state))
    metrics["update/skipped"] = 1.0 - finite.astype(jnp.float32)
    drift = per_mb.pop("abs_log_ratio_sum")
    selected_drift = per_mb.pop("selected_abs_log_ratio_sum")
    metrics.update({f"loss/{k}": v.mean() for k, v in per_mb.items()})
    metrics["loss/n_selected_total"] = per_mb["n_selected"].sum()
    metrics.update(
        _off_policy_drift(drift, selected_drift, per_mb["n_tokens"], per_mb["n_selected"])
    )
    metrics["advantage/mean_abs"] = masked_mean(jnp.abs(data["advantages"]), mask)
    metrics.update(dynamics.covariance_metrics(data["old_logp"], data["advantages"], mask))
    _, metrics["cov/response_mean"] = dynamics.response_covariance(
        data["old_logp"], data["advantages"], mask, batch["group_ids"], rl_cfg.num_groups
    )
    if rl_cfg.measure_dynamics:
      metrics.update(entropy_change(state.params, params, batch, mask))
      metrics["entropy/recomputed_token_mean"] = masked_mean(data["old_entropy"], mask)
    metrics["entropy/sampled_nll"] = masked_mean(-data["old_logp"], mask)
    states, after = interventions.after_update(loss_cfg, states, rollout)
    states = _keep_if_not(finite, states, state.interventions)
    metrics.update(after)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, rng=rng, interventions=states
    )
    return new_state, metrics

  def entropy_change(old_params, new_params, batch, mask):
    """Predicted (first order) and measured entropy change per token, in row chunks."""

    def rows_fn(rows):
      before = passes.completion_hidden(model_cfg, old_params, rows)
      after = passes.completion_hidden(model_cfg, new_params, rows)
      predicted, measured = dynamics.entropy_change_from_hidden(
          before,
          unembedding(model_cfg, old_params),
          after,
          unembedding(model_cfg, new_params),
          temperature=rl_cfg.temperature,
          token_chunk=rl_cfg.token_chunk,
      )
      return {"predicted": predicted, "measured": measured}

    change = no_grad_chunks(rows_fn, batch)
    return {
        "dynamics/predicted_entropy_change": masked_mean(change["predicted"], mask),
        "dynamics/measured_entropy_change": masked_mean(change["measured"], mask),
    }

  if mesh is None:
    return jax.jit(update, donate_argnums=0)
  if state_sharding is None:
    raise ValueError("make_rl_update(mesh=...) needs state_sharding= (sharding.state_shardings)")
  return sharding.jit_on_mesh(
      update,
      mesh,
      donate_argnums=0,
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
  )
