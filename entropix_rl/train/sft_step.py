"""Supervised warm start: next-token cross-entropy on demonstration completions, with
gradient accumulation over micro-batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from entropix_rl import sharding, token_stats
from entropix_rl.models import ModelConfig, forward_hidden, unembedding
from entropix_rl.train import passes
from entropix_rl.train.state import TrainState


def sft_nll_sum(
    model_cfg: ModelConfig, params, batch: dict, *, token_chunk: int = 2048, remat: bool = False
) -> jax.Array:
  """Summed negative log-likelihood of the target tokens.

  Args:
    batch: `tokens [B, T]` int32 (left-padded), `attention_mask [B, T]` bool,
      `loss_mask [B, T]` float32 marking the tokens to predict (the demonstration completion,
      including its stop token).

  Returns:
    `Σ −log p(target) · loss_mask` over the batch (nats).
  """
  hidden, _ = forward_hidden(
      model_cfg, params, batch["tokens"], mask=batch["attention_mask"], remat=remat
  )
  logp, _ = token_stats.token_logp_entropy(
      hidden[:, :-1],
      unembedding(model_cfg, params),
      batch["tokens"][:, 1:],
      token_chunk=token_chunk,
      with_entropy=False,
  )
  return -(logp * batch["loss_mask"][:, 1:]).sum()


def make_sft_step(
    model_cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    *,
    token_chunk: int = 2048,
    remat: bool = False,
    micro_batch_size: int = 0,
    batch_size: int | None = None,
    mesh: Mesh | None = None,
    state_sharding: Any = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The jitted `sft_step(state, batch) -> (state, metrics)`.

  With `micro_batch_size` (sequences per data shard per forward/backward) the batch of
  `batch_size` rows is split into micro-batches whose gradients add up to the batch's: each
  micro-batch's NLL sum is divided by the target count of the whole batch, so the result is
  the token mean over the batch, not a mean of micro-batch means. Gradients accumulate in
  float32.
  """
  shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  pieces = 1
  if micro_batch_size:
    if batch_size is None or (batch_size // shards) % micro_batch_size or batch_size % shards:
      raise ValueError(
          f"sft.micro_batch_size={micro_batch_size} must divide the "
          f"{batch_size} / {shards} sequences per data shard of sft.batch_size"
      )
    pieces = batch_size // (shards * micro_batch_size)

  def step(state: TrainState, batch: dict):
    targets = jnp.maximum(batch["loss_mask"][:, 1:].sum(), 1.0)
    nll = (
        lambda p, rows: sft_nll_sum(model_cfg, p, rows, token_chunk=token_chunk, remat=remat)
        / targets
    )
    if pieces == 1:
      loss, grads = jax.value_and_grad(nll)(state.params, batch)
    else:

      def micro_step(carry, rows):
        value, g = jax.value_and_grad(nll)(state.params, passes.constrain_rows(rows, mesh))
        return jax.tree.map(lambda acc, x: acc + x.astype(jnp.float32), carry, (value, g)), None

      zeros = jax.tree.map(
          lambda p: jnp.zeros(p.shape, jnp.float32), (jnp.float32(0), state.params)
      )
      (loss, grads), _ = jax.lax.scan(micro_step, zeros, passes.split_rows(batch, pieces, shards))
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"sft/nll": loss, "sft/grad_norm": optax.global_norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  if mesh is None:
    return jax.jit(step, donate_argnums=0)
  return sharding.jit_on_mesh(
      step,
      mesh,
      donate_argnums=0,
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
  )
