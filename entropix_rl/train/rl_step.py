"""One RL update on a rollout batch: old/ref log-probs, advantages, epochs × mini-batches of
`policy_loss`, then the entropy-dynamics measurements of the update. One jitted function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from entropix_rl import advantages as advantages_lib
from entropix_rl import dynamics, losses, token_stats
from entropix_rl.losses.aggregation import masked_mean
from entropix_rl.models import ModelConfig, forward_hidden, unembedding
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
    measure_dynamics: also run the post-update forward that measures predicted vs actual
      entropy change (one extra forward pass).
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

  def __post_init__(self):
    if self.advantage not in ADVANTAGE_ESTIMATORS:
      raise ValueError(f"rl.advantage={self.advantage!r}; allowed: {ADVANTAGE_ESTIMATORS}")
    if self.group_size < 1 or self.num_groups < 1:
      raise ValueError(f"rl.group_size={self.group_size} and rl.prompts_per_step={self.num_groups} "
                       "must be >= 1")
    if self.advantage in ("grpo", "rloo") and self.group_size == 1:
      raise ValueError(f"rl.group_size=1 with rl.advantage={self.advantage!r}: group statistics "
                       "need at least 2 samples per prompt; use group_size >= 2")
    if self.ppo_epochs < 1:
      raise ValueError(f"rl.ppo_epochs={self.ppo_epochs} must be >= 1")
    if self.num_minibatches < 1 or self.batch_size % self.num_minibatches:
      raise ValueError(f"rl.num_minibatches={self.num_minibatches} must divide the batch of "
                       f"{self.batch_size} responses")
    if self.temperature <= 0:
      raise ValueError(f"sampler.temperature={self.temperature} must be > 0 for RL")

  @property
  def batch_size(self) -> int:
    return self.num_groups * self.group_size


def completion_stats(model_cfg: ModelConfig, params: Any, batch: dict, *, temperature: float,
                     token_chunk: int, with_entropy: bool, remat: bool = False
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Teacher-forced stats of the completion tokens.

  Args:
    batch: `tokens [N, P+C]` (left-padded prompt then completion), `attention_mask [N, P+C]`,
      `completion [N, C]`.

  Returns:
    logp `[N, C]`, entropy `[N, C]` (zeros unless `with_entropy`), and the hidden states that
    predict each completion token `[N, C, D]`.
  """
  prompt_len = batch["tokens"].shape[1] - batch["completion"].shape[1]
  hidden, _ = forward_hidden(model_cfg, params, batch["tokens"], mask=batch["attention_mask"],
                             remat=remat)
  hidden = hidden[:, prompt_len - 1:-1]
  logp, entropy = token_stats.token_logp_entropy(
      hidden, unembedding(model_cfg, params), batch["completion"], temperature=temperature,
      token_chunk=token_chunk, with_entropy=with_entropy)
  return logp, entropy, hidden


def _sequence_advantages(cfg: RLUpdateConfig, rewards: jax.Array, group_ids: jax.Array) -> jax.Array:
  return advantages_lib.compute_advantages(cfg.advantage, rewards, group_ids, cfg.num_groups)


def make_rl_update(model_cfg: ModelConfig, rl_cfg: RLUpdateConfig, loss_cfg: Any,
                   optimizer: optax.GradientTransformation, *,
                   jit_kwargs: dict | None = None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Builds the jitted `rl_update(state, batch) -> (state, metrics)`.

  `batch` holds, for N = rl_cfg.batch_size responses with prompt length P and completion
  length C: `tokens [N, P+C]` int32, `attention_mask [N, P+C]` bool, `completion [N, C]`
  int32, `completion_mask [N, C]` float32, `rewards [N]` float32, `group_ids [N]` int32.
  Old log-probs are recomputed here with the pre-update params (so the first mini-batch is
  exactly on-policy), as are reference log-probs when `state.ref_params` is set.

  `jit_kwargs` go to `jax.jit` (e.g. `in_shardings`/`out_shardings` on a mesh).
  """
  loss_cfg = losses.resolve_loss_config(loss_cfg)
  needs_entropy = losses.loss_needs_entropy(loss_cfg)
  needs_entropy_grad = losses.loss_needs_entropy_grad(loss_cfg)
  stats = lambda params, batch, with_entropy: completion_stats(
      model_cfg, params, batch, temperature=rl_cfg.temperature, token_chunk=rl_cfg.token_chunk,
      with_entropy=with_entropy, remat=rl_cfg.remat)

  def loss_fn(params, mb, rng, entropy_coef):
    logp, entropy, _ = stats(params, mb, needs_entropy)
    if not needs_entropy_grad:
      entropy = jax.lax.stop_gradient(entropy)
    loss, aux = losses.policy_loss(
        loss_cfg, logp=logp, old_logp=mb["old_logp"], advantages=mb["advantages"],
        mask=mb["completion_mask"], rng=rng, ref_logp=mb.get("ref_logp"),
        entropy=entropy if needs_entropy else None, entropy_coef=entropy_coef)
    aux = {k: v for k, v in aux.items() if k not in ("per_token_loss", "selected")}
    return loss, aux

  def update(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng, shuffle_key, loss_key = jax.random.split(state.rng, 3)
    mask = batch["completion_mask"].astype(jnp.float32)
    old_logp, old_entropy, old_hidden = stats(state.params, batch, rl_cfg.measure_dynamics)
    old_logp = jax.lax.stop_gradient(old_logp)
    seq_adv = _sequence_advantages(rl_cfg, batch["rewards"], batch["group_ids"])
    token_adv = seq_adv[:, None] * mask
    data = dict(batch, old_logp=old_logp, advantages=token_adv)
    if state.ref_params is not None:
      data["ref_logp"] = jax.lax.stop_gradient(stats(state.ref_params, batch, False)[0])
    entropy_coef = losses.entropy_coefficient(loss_cfg, state.controller)

    n, m = rl_cfg.batch_size, rl_cfg.num_minibatches
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(
        jax.random.split(shuffle_key, rl_cfg.ppo_epochs))
    order = perms.reshape(rl_cfg.ppo_epochs * m, n // m)
    loss_keys = jax.random.split(loss_key, rl_cfg.ppo_epochs * m)

    def minibatch_step(carry, xs):
      params, opt_state = carry
      rows, key = xs
      mb = jax.tree.map(lambda x: x[rows], data)
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, key, entropy_coef)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), dict(aux, loss=loss, grad_norm=optax.global_norm(grads))

    (params, opt_state), per_mb = jax.lax.scan(
        minibatch_step, (state.params, state.opt_state), (order, loss_keys))
    metrics = {f"loss/{k}": v.mean() for k, v in per_mb.items()}
    metrics["loss/n_selected_total"] = per_mb["n_selected"].sum()
    metrics["advantage/mean_abs"] = masked_mean(jnp.abs(token_adv), mask)
    metrics.update(dynamics.covariance_metrics(old_logp, token_adv, mask))
    _, metrics["cov/response_mean"] = dynamics.response_covariance(
        old_logp, token_adv, mask, batch["group_ids"], rl_cfg.num_groups)
    if rl_cfg.measure_dynamics:
      _, _, new_hidden = stats(params, batch, False)
      predicted, measured = dynamics.entropy_change_from_hidden(
          old_hidden, unembedding(model_cfg, state.params), new_hidden,
          unembedding(model_cfg, params), temperature=rl_cfg.temperature,
          token_chunk=rl_cfg.token_chunk)
      metrics["dynamics/predicted_entropy_change"] = masked_mean(predicted, mask)
      metrics["dynamics/measured_entropy_change"] = masked_mean(measured, mask)
      metrics["entropy/recomputed_token_mean"] = masked_mean(old_entropy, mask)
    sampled_nll = masked_mean(-old_logp, mask)
    controller = losses.update_entropy_controller(loss_cfg, state.controller, sampled_nll)
    metrics["entropy/sampled_nll"] = sampled_nll
    if loss_cfg.entropy_bonus.adaptive:
      metrics["entropy/adaptive_coef"] = entropy_coef
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                              controller=controller)
    return new_state, metrics

  return jax.jit(update, donate_argnums=0, **(jit_kwargs or {}))
