"""The supervised warm start: next-token cross-entropy on the task's demonstrations.

`warm_start(exp, directory, mesh)` trains `sft.steps` optimizer steps from random init and
saves a Hugging Face checkpoint to `directory/sft`, or loads that checkpoint when it exists (a
warm start is done once and shared, `sft.shared_dir`). Beside the checkpoint,
`warm_start.json` records the settings that made it (`warm_start_settings`: the seed, task,
tokenizer, data, model and the SFT's steps, batch and optimizer); a run whose settings differ
is refused before it trains, naming the fields, rather than silently starting from another
warm start. `sft_step` is one optimizer step, its gradient accumulated over micro-batches;
`jit_sft_step` jits it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import json
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax

from entropix_rl import console, paths, sharding, token_stats
from entropix_rl import data as data_lib
from entropix_rl.models import ModelConfig, forward_hidden, hf, init_params, unembedding
from entropix_rl.padding import left_pad
from entropix_rl.train import config_dict
from entropix_rl.train.config import ConfigError, Experiment, ExperimentConfig, SFTConfig
from entropix_rl.train.metrics import MetricWriter
from entropix_rl.train.optim import learning_rate_schedule, make_optimizer
from entropix_rl.train.state import TrainState, create_train_state_on_mesh


def warm_start(
    exp: Experiment, directory: epath.PathLike, mesh: Mesh, *, log: bool = True
) -> tuple[ModelConfig, Any]:
  """The SFT warm start in `directory/sft`: loaded if it exists, else trained and saved there.

  Every host reads the whole global batch and draws its demonstrations from the one seeded
  stream, then trains on its own block of rows, so the batches do not depend on the number of
  hosts.

  Returns:
    (model config, params placed on `mesh`).
  """
  cfg, sft = exp.config, exp.config.sft
  out_dir = paths.as_path(directory) / "sft"
  if (out_dir / "config.json").exists():
    check_settings(out_dir, cfg)
    if log:
      logging.info("SFT warm start found at %s; reusing it", out_dir)
    return hf.load(
        out_dir,
        shardings=sharding.param_shardings(exp.model, mesh),
        expected=exp.model,
        **cfg.model.runtime,
    )
  rng = jax.random.PRNGKey(cfg.seed)
  optimizer = make_optimizer(sft.optimizer)
  schedule = learning_rate_schedule(sft.optimizer)
  params = jax.jit(
      functools.partial(init_params, exp.model),
      out_shardings=sharding.param_shardings(exp.model, mesh),
  )(jax.random.fold_in(rng, 0))
  state, state_sharding = create_train_state_on_mesh(
      params, optimizer, jax.random.fold_in(rng, 1), mesh
  )
  step_fn = jit_sft_step(
      exp.model,
      optimizer,
      sft,
      token_chunk=cfg.rl.token_chunk,
      remat=cfg.rl.remat,
      mesh=mesh,
      state_sharding=state_sharding,
  )
  local = sft.batch_size // jax.process_count()
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  pipeline = data_lib.make_prompt_pipeline(
      cfg.data,
      exp.tokenizer,
      batch_size=sft.batch_size,
      seed=cfg.seed + 1000,
      split="train",
      task=exp.task,
      shard_index=0,
      shard_count=1,
  )
  length = cfg.data.max_prompt_len + exp.sampler.max_new_tokens
  demo_rng = np.random.default_rng(cfg.seed)
  writer = MetricWriter(out_dir.parent / "sft_logs", enabled=jax.process_index() == 0)
  progress = console.Progress(
      sft.steps, every=sft.log_every, keys=("sft/nll",), label="sft", enabled=log
  )
  for step in range(1, sft.steps + 1):
    arrays = demonstrations(exp, next(pipeline), demo_rng, length)
    arrays = {k: v[rows] for k, v in arrays.items()}
    state, metrics = step_fn(state, sharding.to_global(arrays, mesh))
    if step % sft.log_every == 0 or step == sft.steps:
      scalars = writer.write(
          step, {**jax.device_get(metrics), "optimizer/learning_rate": float(schedule(step - 1))}
      )
      progress.update(step, scalars)
  writer.close()
  params = multihost_utils.process_allgather(state.params, tiled=True)
  if jax.process_index() == 0:
    hf.save(out_dir, exp.model, params)
    (out_dir / SETTINGS_FILE).write_text(json.dumps(warm_start_settings(cfg), indent=2))
  return exp.model, state.params


SETTINGS_FILE = "warm_start.json"
# The fields that decide a warm start's weights (a key ending in "." covers its section); the
# attention kernel, logging cadence and micro-batches change how it runs, not what it learns.
SETTINGS = (
    "seed",
    "task.",
    "tokenizer.",
    "data.",
    "model.",
    "sft.steps",
    "sft.batch_size",
    "sft.optimizer.",
)
_RUNTIME = ("model.attention_impl", "model.attention_block_q", "model.attention_block_k")


def warm_start_settings(config: ExperimentConfig) -> dict[str, Any]:
  """The dotted fields of `config` that decide the warm start (`SETTINGS`)."""
  return {
      key: value
      for key, value in config_dict.flat(config).items()
      if any(key == s or (s.endswith(".") and key.startswith(s)) for s in SETTINGS)
      and key not in _RUNTIME
  }


def check_settings(directory: epath.Path, config: ExperimentConfig) -> None:
  """Checks that the warm start in `directory` was made with `config`'s settings.

  Raises:
    ConfigError: naming every differing field, its value there and here, and what to do.
  """
  path = directory / SETTINGS_FILE
  if not path.exists():
    logging.warning(
        "the SFT warm start in %s has no %s (made before warm starts recorded their settings); "
        "reusing it unchecked",
        directory,
        SETTINGS_FILE,
    )
    return
  recorded = json.loads(path.read_text())
  wanted = warm_start_settings(config)
  differ = {k: (recorded.get(k), wanted.get(k)) for k in sorted(set(recorded) | set(wanted))}
  differ = {k: v for k, v in differ.items() if v[0] != v[1]}
  if differ:
    fields = "; ".join(f"{k}: {old!r} there, {new!r} here" for k, (old, new) in differ.items())
    raise ConfigError(
        f"the SFT warm start in {directory} was made with other settings ({fields}). Point "
        "sft.shared_dir at another directory (a relative one is under the run's workdir, e.g. "
        f"../sft_other), or delete {directory} to train it again"
    )


def demonstrations(
    exp: Experiment, prompts: dict[str, Any], rng: np.random.Generator, length: int
) -> dict[str, np.ndarray]:
  """`sft_batch` of the prompts of a pipeline batch, each followed by one of the task's
  demonstrations (drawn with `rng`) and the stop token."""
  tokenizer = exp.tokenizer
  prompt_tokens = [
      list(row[-n:]) if n else []
      for row, n in zip(prompts["prompt_tokens"], prompts["prompt_lengths"])
  ]
  completions = [
      tokenizer.encode(exp.task.demonstration(ex, rng)) + [tokenizer.eos_id]
      for ex in prompts["examples"]
  ]
  return sft_batch(prompt_tokens, completions, length, tokenizer.pad_id)


def sft_batch(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], length: int, pad_id: int
) -> dict[str, np.ndarray]:
  """Demonstrations as one left-padded sequence each, with the completion tokens marked.

  Returns `tokens [B, length]`, `attention_mask [B, length]` and `loss_mask [B, length]`
  (1.0 on completion tokens, which the model learns to predict).
  """
  rows = [list(p) + list(c) for p, c in zip(prompts, completions)]
  tokens, mask = left_pad(rows, length, pad_id)
  loss_mask = np.zeros((len(rows), length), np.float32)
  for i, c in enumerate(completions):
    if len(c):
      loss_mask[i, length - len(c) :] = 1.0
  return {"tokens": tokens, "attention_mask": mask, "loss_mask": loss_mask}


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


def sft_step(
    model_cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    batch: dict,
    *,
    token_chunk: int = 2048,
    remat: bool = False,
    pieces: int = 1,
    mesh: Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the token-mean NLL of `batch`, the gradient accumulated over
  `pieces` micro-batches: each micro-batch's NLL sum is divided by the target count of the
  whole batch, so the result is the token mean over the batch, not a mean of micro-batch
  means. Gradients accumulate in float32."""
  targets = jnp.maximum(batch["loss_mask"][:, 1:].sum(), 1.0)

  def nll(params, rows):
    return sft_nll_sum(model_cfg, params, rows, token_chunk=token_chunk, remat=remat) / targets

  if pieces == 1:
    loss, grads = jax.value_and_grad(nll)(state.params, batch)
  else:

    def micro_step(carry, rows):
      value, g = jax.value_and_grad(nll)(state.params, sharding.constrain_rows(rows, mesh))
      return jax.tree.map(lambda acc, x: acc + x.astype(jnp.float32), carry, (value, g)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), (jnp.float32(0), state.params))
    split = sharding.split_rows(batch, pieces, sharding.batch_shards(mesh))
    (loss, grads), _ = jax.lax.scan(micro_step, zeros, split)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"sft/nll": loss, "sft/grad_norm": optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def jit_sft_step(
    model_cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    sft: SFTConfig,
    *,
    token_chunk: int = 2048,
    remat: bool = False,
    mesh: Mesh | None = None,
    state_sharding: Any = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """`sft_step` jitted for `sft.batch_size` rows in micro-batches of `sft.micro_batch_size`
  sequences per data shard, the state donated.

  Raises:
    ValueError: when the batch or its micro-batches do not split over the mesh.
  """
  shards = sharding.batch_shards(mesh)
  sft.check_shards(shards)
  micro = sft.micro_batch_size
  pieces = sft.batch_size // (shards * micro) if micro else 1
  step = functools.partial(
      sft_step, model_cfg, optimizer, token_chunk=token_chunk, remat=remat, pieces=pieces, mesh=mesh
  )
  return sharding.jit_train_step(step, mesh, state_sharding)
