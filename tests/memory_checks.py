"""Compiled per-device memory on 8 simulated CPU devices; `tests/test_compiled_memory.py` runs
this in a subprocess and asserts on the JSON it prints.

Nothing is allocated: the real jitted functions are lowered with abstract inputs and
`compiled.memory_analysis()` reports the temporary bytes of the partitioned program.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import json
import math
import sys

import jax
import jax.numpy as jnp

from entropix_rl import interventions, sampling, sharding
from entropix_rl.models import forward_hidden, init_params, tiny_config
from entropix_rl.train.config import RLConfig
from entropix_rl.train.optim import OptimizerConfig, make_optimizer
from entropix_rl.train.rollout import abstract_rl_batch
from entropix_rl.train.state import create_train_state
from entropix_rl.train.update import UpdateSpec, jit_rl_update

MODEL = tiny_config(
    vocab_size=512,
    hidden_size=128,
    num_layers=2,
    num_heads=8,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=256,
    max_position_embeddings=8192,
)
MESH = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})


def _abstract(tree, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def _params(model):
  params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
  return _abstract(params, sharding.param_shardings(model, MESH))


def attention_temp(impl: str, seq: int, rows: int = 4) -> int:
  """Temp bytes of the gradient of a decoder forward over `rows x seq` tokens."""
  model = MODEL.replace(attention_impl=impl, attention_block_q=128, attention_block_k=128)
  tokens = jax.ShapeDtypeStruct((rows, seq), jnp.int32, sharding=sharding.batch_sharding(MESH))

  def loss(params, tokens):
    return forward_hidden(model, params, tokens, remat=True)[0].astype(jnp.float32).sum()

  fn = sharding.jit_on_mesh(jax.grad(loss), MESH)
  return fn.lower(_params(model), tokens).compile().memory_analysis().temp_size_in_bytes


def rl_update_temp(groups: int, micro: int, logprob_micro: int) -> int:
  """Temp bytes of `rl_update` for `groups x 8` rollouts in mini-batches of 32 sequences
  (8 per data shard), with `micro` / `logprob_micro` sequences per shard per chunk."""
  model = MODEL.replace(attention_impl="blockwise", attention_block_q=128, attention_block_k=128)
  rl_cfg = RLConfig(
      prompts_per_step=groups,
      group_size=8,
      num_minibatches=groups // 4,
      token_chunk=256,
      remat=True,
      micro_batch_size=micro,
      logprob_micro_batch_size=logprob_micro,
  )
  loss_cfg = interventions.default_loss_config()
  loss_cfg.name = "clip_cov"
  loss_cfg = interventions.resolve_loss_config(loss_cfg)
  optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-3))
  params = _params(model)
  build = lambda p: create_train_state(
      p, optimizer, jax.random.PRNGKey(0), interventions=interventions.init_states(loss_cfg)
  )
  state = jax.eval_shape(build, params)
  state = _abstract(state, sharding.state_shardings(state, optimizer, MESH))
  n, prompt, completion = groups * 8, 64, 448
  batch = abstract_rl_batch(n, prompt, completion, sharding.batch_sharding(MESH))
  update = jit_rl_update(
      UpdateSpec(model=model, rl=rl_cfg, loss=loss_cfg),
      optimizer,
      mesh=MESH,
      state_sharding=jax.tree.map(lambda x: x.sharding, state),
  )
  return update.lower(state, batch).compile().memory_analysis().temp_size_in_bytes


def refill_temp(prompts: int = 8, samples: int = 8, prompt: int = 64, completion: int = 448):
  """Temp bytes of the sampler's refill (every row of a `prompts x samples` batch freed at once,
  as many new prompts as the batch started with) and the per-device bytes of its KV cache."""
  model = MODEL.replace(attention_impl="blockwise", attention_block_q=64, attention_block_k=64)
  cfg = sampling.SamplerConfig(num_samples=samples, max_new_tokens=completion)
  rows = prompts * samples
  state = jax.eval_shape(lambda: sampling.empty_state(model, rows, prompt + completion))
  state = _abstract(state, sampling.state_shardings(model, MESH))
  lowered = sampling.compiled_refill(model, cfg, MESH).lower(
      _params(model),
      state,
      *sampling.abstract_refill_inputs(MESH, prompts, rows, prompt),
      jnp.float32(1.0),
      None,
  )
  cache = state.cache.k.sharding.shard_shape(state.cache.k.shape)
  cache_bytes = 2 * math.prod(cache) * state.cache.k.dtype.itemsize
  return {
      "temp": lowered.compile().memory_analysis().temp_size_in_bytes,
      "cache": cache_bytes,
  }


def main():
  assert jax.device_count() == 8, jax.devices()
  checks = {
      "attention": {
          impl: {str(seq): attention_temp(impl, seq) for seq in (1024, 2048)}
          for impl in ("blockwise", "dense")
      },
      "rl_update": {
          f"{groups}x8/{name}": rl_update_temp(groups, *knobs)
          for groups in (8, 16)
          for name, knobs in (("micro1", (1, 1)), ("unsplit", (0, 0)))
      },
      "refill": refill_temp(),
  }
  json.dump(checks, sys.stdout)


if __name__ == "__main__":
  main()
