"""Supervised warm start: next-token cross-entropy on demonstration completions."""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from entropix_rl import token_stats
from entropix_rl.losses.aggregation import masked_mean
from entropix_rl.models import ModelConfig, forward_hidden, unembedding
from entropix_rl.train.state import TrainState


def sft_loss(model_cfg: ModelConfig, params, batch: dict, *, token_chunk: int = 2048,
             remat: bool = False) -> tuple[jax.Array, dict]:
  """Token-mean negative log-likelihood of the target tokens.

  Args:
    batch: `tokens [B, T]` int32 (left-padded), `attention_mask [B, T]` bool,
      `loss_mask [B, T]` float32 marking the tokens to predict (the demonstration completion,
      including its stop token).

  Returns:
    (loss, metrics): the mean NLL in nats per target token, also as `metrics["sft/nll"]`.
  """
  hidden, _ = forward_hidden(model_cfg, params, batch["tokens"], mask=batch["attention_mask"],
                             remat=remat)
  logp, _ = token_stats.token_logp_entropy(
      hidden[:, :-1], unembedding(model_cfg, params), batch["tokens"][:, 1:],
      token_chunk=token_chunk, with_entropy=False)
  loss = -masked_mean(logp, batch["loss_mask"][:, 1:])
  return loss, {"sft/nll": loss}


def make_sft_step(model_cfg: ModelConfig, optimizer: optax.GradientTransformation, *,
                  token_chunk: int = 2048, remat: bool = False,
                  jit_kwargs: dict | None = None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The jitted `sft_step(state, batch) -> (state, metrics)`."""

  def step(state: TrainState, batch: dict):
    grad_fn = jax.value_and_grad(
        lambda p: sft_loss(model_cfg, p, batch, token_chunk=token_chunk, remat=remat), has_aux=True)
    (loss, metrics), grads = grad_fn(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, **{"sft/grad_norm": optax.global_norm(grads)})
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return jax.jit(step, donate_argnums=0, **(jit_kwargs or {}))
