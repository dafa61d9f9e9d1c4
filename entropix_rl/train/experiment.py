"""The experiment: config → (optional SFT warm start) → GRPO-style RL with metrics and checkpoints.

`run(config, workdir)` is what `experiments/train.py` calls. Every config field is validated in
`resolve()` before any work starts, so a bad sweep entry fails in seconds with an error naming
the field and its allowed values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import json
import time
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
import ml_collections
import numpy as np

from entropix_rl import data as data_lib
from entropix_rl import interventions, paths, sampling, sharding, tasks
from entropix_rl.models import ModelConfig, hf, init_params
from entropix_rl.tokenizer import CharTokenizer, HFTokenizer
from entropix_rl.train import batching, rollout_metrics
from entropix_rl.train import rollout as rollout_lib
from entropix_rl.train.checkpoint import Checkpointer, PreemptionGuard, preemption_agreed
from entropix_rl.train.config import ExperimentConfig, ModelSection
from entropix_rl.train.evaluation import EvalConfig, evaluate
from entropix_rl.train.metrics import MetricWriter, Progress, Table
from entropix_rl.train.optim import OptimizerConfig, learning_rate_schedule, make_optimizer
from entropix_rl.train.rl_step import RLUpdateConfig, make_rl_update
from entropix_rl.train.sft_step import make_sft_step
from entropix_rl.train.state import create_train_state_on_mesh

CONSOLE_KEYS = (
    "entropy/paper",
    "reward/mean",
    "accuracy/distinct_correct_per_group",
    "eval/sampled_accuracy",
    "eval/greedy_accuracy",
)


class Preempted(Exception):
  """The run saved a checkpoint and stopped because it was preempted (SIGTERM, or a
  preemption sync point of the distributed runtime); run it again to resume."""

  def __init__(self, step: int, workdir: epath.Path):
    super().__init__(
        f"preempted: checkpoint saved at RL step {step} in {workdir}; run the same "
        "command again to resume"
    )
    self.step = step


class UpdatesNotFinite(RuntimeError):
  """Several RL updates in a row had a non-finite loss or gradient and were skipped."""


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything `run` needs: the typed config plus what is derived from it and the tokenizer."""

  config: ExperimentConfig
  model: ModelConfig | None
  sampler: sampling.SamplerConfig
  rl: RLUpdateConfig
  loss: Any
  eval: EvalConfig

  @property
  def rl_optimizer(self) -> OptimizerConfig:
    return self.config.optimizer

  @property
  def sft_optimizer(self) -> OptimizerConfig:
    return self.config.sft.optimizer


def _model_config(model: ModelSection, vocab_size: int | None) -> ModelConfig:
  if model.init == "checkpoint":
    return hf.read_config(
        model.checkpoint, param_dtype=model.param_dtype, compute_dtype=model.compute_dtype
    ).replace(**model.runtime)
  values = {
      **model.architecture,
      "param_dtype": model.param_dtype,
      "compute_dtype": model.compute_dtype,
      **model.runtime,
  }
  if vocab_size is not None:
    values["vocab_size"] = vocab_size
  missing = sorted(
      {
          "vocab_size",
          "hidden_size",
          "num_layers",
          "num_heads",
          "num_kv_heads",
          "head_dim",
          "intermediate_size",
      }
      - set(values)
  )
  if missing:
    raise ValueError(
        f"model.init='random' needs the architecture: {['model.' + k for k in missing]}"
    )
  return ModelConfig(**values)


def step_delimiter_id(tokenizer, delimiter: str) -> int:
  """The token id of `rl.step_delimiter`, or −1 for "" (no delimiter: one step per response).

  Raises:
    ValueError: naming the field, unless the tokenizer encodes `delimiter` as one token.
  """
  if not delimiter:
    return -1
  try:
    ids = tokenizer.encode(delimiter)
  except ValueError as err:
    raise ValueError(f"rl.step_delimiter={delimiter!r} cannot be encoded: {err}") from None
  if len(ids) != 1:
    raise ValueError(
        f"rl.step_delimiter={delimiter!r} encodes to {len(ids)} tokens {ids}; "
        "allowed: a string the tokenizer encodes as exactly one token, or '' (none)"
    )
  return int(ids[0])


def typed(config: ml_collections.ConfigDict | ExperimentConfig) -> ExperimentConfig:
  """The typed config (`ExperimentConfig.from_config_dict`), once."""
  if isinstance(config, ExperimentConfig):
    return config
  return ExperimentConfig.from_config_dict(config)


def resolve(
    config: ml_collections.ConfigDict | ExperimentConfig,
    *,
    tokenizer=None,
    model: ModelConfig | None = None,
) -> Experiment:
  """Validates the whole config, then what depends on several sections and the tokenizer.

  Args:
    config: the experiment config (a config file's ConfigDict, or already typed).
    tokenizer: the tokenizer (default: made from `config.tokenizer`); only its `stop_ids`,
      `pad_id`, `vocab_size` and the encoding of `rl.step_delimiter` are read.
    model: the model config, instead of the one `config.model` describes (e.g. a known
      architecture, for compiling without a checkpoint).

  Raises:
    ValueError: naming the field(s) and the allowed values.
  """
  spec = typed(config)
  tokenizer = tokenizer or make_tokenizer(spec)
  model_cfg = model or _model_config(
      spec.model, tokenizer.vocab_size if spec.tokenizer.kind == "char" else None
  )
  sampler_cfg = dataclasses.replace(
      spec.sampler,
      stop_ids=spec.sampler.stop_ids or tokenizer.stop_ids,
      pad_id=tokenizer.pad_id,
      min_prompt_bucket=spec.data.max_prompt_len,
  )
  rl = spec.rl
  rl_cfg = RLUpdateConfig(
      num_groups=rl.prompts_per_step,
      group_size=rl.group_size,
      ppo_epochs=rl.ppo_epochs,
      num_minibatches=rl.num_minibatches,
      advantage=rl.advantage,
      temperature=sampler_cfg.temperature,
      token_chunk=rl.token_chunk,
      remat=rl.remat,
      measure_dynamics=rl.measure_dynamics,
      micro_batch_size=rl.micro_batch_size,
      logprob_micro_batch_size=rl.logprob_micro_batch_size,
      feature_chunk=rl.feature_chunk,
      step_delimiter_id=step_delimiter_id(tokenizer, rl.step_delimiter),
      old_logp_from_rollout=rl.old_logp_from_rollout,
  )
  loss_cfg = spec.loss
  if loss_cfg.selection_scope == "microbatch" and loss_cfg.microbatch_size is None:
    if not rl_cfg.micro_batch_size:
      raise ValueError(
          "loss.selection_scope='microbatch' needs loss.microbatch_size or "
          "rl.micro_batch_size (sequences per device per micro-batch, as verl)"
      )
    loss_cfg = dataclasses.replace(loss_cfg, microbatch_size=rl_cfg.micro_batch_size)
  if rl.completion_buckets > 1 and loss_cfg.loss_scale_factor is None:
    loss_cfg = dataclasses.replace(loss_cfg, loss_scale_factor=sampler_cfg.max_new_tokens)
  if rl_cfg.old_logp_from_rollout and rollout_lib.changes_temperature(loss_cfg):
    raise ValueError(
        "rl.old_logp_from_rollout=True needs rollouts sampled at the training "
        "temperature; an active intervention changes the sampling temperature"
    )
  context = spec.data.max_prompt_len + sampler_cfg.max_new_tokens
  if context > model_cfg.max_position_embeddings:
    raise ValueError(
        f"data.max_prompt_len ({spec.data.max_prompt_len}) + "
        f"sampler.max_new_tokens ({sampler_cfg.max_new_tokens}) = {context} exceeds the "
        f"model's context (model.max_position_embeddings="
        f"{model_cfg.max_position_embeddings})"
    )
  return Experiment(
      config=spec, model=model_cfg, sampler=sampler_cfg, rl=rl_cfg, loss=loss_cfg, eval=spec.eval
  )


def check_layout(exp: Experiment) -> None:
  """The checks that depend on this job's devices and processes (mesh sizes, batches that
  split over the mesh's data shards and over the hosts); `run` makes them before any work.

  Raises:
    ValueError: naming the field.
  """
  spec, rl_cfg = exp.config, exp.rl
  sizes = sharding.mesh_shape(spec.mesh.as_dict(), jax.device_count())
  shards = sizes["data"] * sizes["fsdp"]
  rl_cfg.check_shards(shards)
  hosts = jax.process_count()
  for name, rows, per, what in (
      ("rl.prompts_per_step", rl_cfg.num_groups, hosts, "processes"),
      ("eval.num_prompts", spec.eval.num_prompts, hosts, "processes"),
      ("sft.batch_size", spec.sft.batch_size, shards, "mesh data x fsdp shards"),
  ):
    if rows % per:
      raise ValueError(f"{name}={rows} must divide by the {per} {what}")


def make_tokenizer(config: ml_collections.ConfigDict | ExperimentConfig):
  spec = typed(config)
  if spec.tokenizer.kind == "char":
    return CharTokenizer(tasks.get_task(spec.task.name, **spec.task.kwargs).alphabet)
  return HFTokenizer(spec.tokenizer.path)


class Scorer:
  """Decodes completions and scores them with the task's verifier (host side, evaluation)."""

  def __init__(self, task, tokenizer):
    self.task, self.tokenizer = task, tokenizer

  def decode(self, completion_tokens: np.ndarray) -> list[str]:
    return [self.tokenizer.decode(row) for row in completion_tokens]

  def score(self, examples: list, texts: list[str]) -> np.ndarray:
    return np.asarray([self.task.verify(ex, t) for ex, t in zip(examples, texts)], np.float32)


def _write_run_info(workdir: epath.Path, exp: Experiment, method: str) -> None:
  info = {
      "method": method,
      "config": json.loads(exp.config.source),
      "model": dataclasses.asdict(exp.model),
      "non_embedding_params": exp.model.num_params(include_embeddings=False),
      "params": exp.model.num_params(),
      "process_count": jax.process_count(),
      "device_count": jax.device_count(),
  }
  (workdir / "run_info.json").write_text(json.dumps(info, indent=2, default=str))


def method_name(config: ml_collections.ConfigDict | ExperimentConfig) -> str:
  """`method` if set, else a short label: the loss name, with clip-higher marked."""
  spec = typed(config)
  name = spec.loss.name
  if spec.loss.clip_eps_high > spec.loss.clip_eps_low and name == "ppo":
    name = "clip_higher"
  if name == "ppo":
    name = "grpo" if spec.rl.advantage == "grpo" else spec.rl.advantage
  return spec.method or name


def run_sft(
    exp: Experiment, workdir: epath.PathLike, tokenizer, task, *, log: bool = True
) -> tuple[ModelConfig, Any]:
  """Supervised warm start from random init; saves a Hugging Face checkpoint to `workdir/sft`.

  If that checkpoint already exists it is loaded instead (SFT is done once and shared). Every
  host reads the whole global batch and draws its demonstrations from the one seeded stream,
  then trains on its own block of rows, so the batches do not depend on the number of hosts.
  """
  cfg = exp.config
  workdir = paths.as_path(workdir)
  out_dir = workdir / "sft"
  mesh = sharding.make_mesh(cfg.mesh.as_dict())
  if (out_dir / "config.json").exists():
    if log:
      logging.info("SFT warm start found at %s; reusing it", out_dir)
    return hf.load(
        out_dir,
        shardings=sharding.param_shardings(exp.model, mesh),
        expected=exp.model,
        **cfg.model.runtime,
    )
  rng = jax.random.PRNGKey(cfg.seed)
  optimizer = make_optimizer(exp.sft_optimizer)
  sft_lr = learning_rate_schedule(exp.sft_optimizer)
  params = jax.jit(
      functools.partial(init_params, exp.model),
      out_shardings=sharding.param_shardings(exp.model, mesh),
  )(jax.random.fold_in(rng, 0))
  state, state_sh = create_train_state_on_mesh(params, optimizer, jax.random.fold_in(rng, 1), mesh)
  step_fn = make_sft_step(
      exp.model,
      optimizer,
      token_chunk=cfg.rl.token_chunk,
      remat=cfg.rl.remat,
      micro_batch_size=cfg.sft.micro_batch_size,
      batch_size=cfg.sft.batch_size,
      mesh=mesh,
      state_sharding=state_sh,
  )
  sharding.check_batch_divisible(cfg.sft.batch_size, mesh, "sft.batch_size")
  rows = _host_block(cfg.sft.batch_size, "sft.batch_size")
  pipeline = data_lib.make_prompt_pipeline(
      cfg.data,
      tokenizer,
      batch_size=cfg.sft.batch_size,
      seed=cfg.seed + 1000,
      split="train",
      task=task,
      shard_index=0,
      shard_count=1,
  )
  length = cfg.data.max_prompt_len + exp.sampler.max_new_tokens
  demo_rng = np.random.default_rng(cfg.seed)
  writer = MetricWriter(workdir / "sft_logs", enabled=jax.process_index() == 0)
  progress = Progress(
      cfg.sft.steps, every=cfg.sft.log_every, keys=("sft/nll",), label="sft", enabled=log
  )
  for step in range(1, cfg.sft.steps + 1):
    batch = next(pipeline)
    prompts = [
        list(row[-n:]) if n else []
        for row, n in zip(batch["prompt_tokens"], batch["prompt_lengths"])
    ]
    completions = [
        tokenizer.encode(task.demonstration(ex, demo_rng)) + [tokenizer.eos_id]
        for ex in batch["examples"]
    ]
    arrays = batching.sft_batch(prompts[rows], completions[rows], length, tokenizer.pad_id)
    state, metrics = step_fn(state, sharding.to_global(arrays, mesh))
    if step % cfg.sft.log_every == 0 or step == cfg.sft.steps:
      scalars = writer.write(
          step, {**jax.device_get(metrics), "optimizer/learning_rate": float(sft_lr(step - 1))}
      )
      progress.update(step, scalars)
  writer.close()
  params = multihost_utils.process_allgather(state.params, tiled=True)
  if jax.process_index() == 0:
    hf.save(out_dir, exp.model, params)
  return exp.model, state.params


def _host_block(rows: int, what: str) -> slice:
  """This host's block of `rows` global rows (hosts in process order)."""
  hosts = jax.process_count()
  if rows % hosts:
    raise ValueError(f"{what}={rows} must divide by the number of processes ({hosts})")
  local = rows // hosts
  return slice(jax.process_index() * local, (jax.process_index() + 1) * local)


SAMPLE_COLUMNS = (
    "group",
    "prompt",
    "completion",
    "reward",
    "correct",
    "length",
    "truncated",
    "entropy",
)


def samples_table(
    responses: rollout_lib.Responses, decode: Callable[[Sequence[int]], str], num_rows: int
) -> Table:
  """The first `num_rows` rollout rows (rows of one prompt are adjacent) as a table: the
  prompt and completion text, reward, the verifier's judgement, length, truncation and the
  mean token entropy."""
  rows = []
  sums, lengths = rollout_metrics.response_entropy_sums(
      responses.entropy, responses.completion_mask
  )
  for i in range(min(num_rows, responses.rows)):
    prompt = responses.prompt_tokens[
        i, responses.prompt_tokens.shape[1] - int(responses.prompt_lengths[i]) :
    ]
    rows.append(
        (
            int(responses.group_ids[i]),
            decode(prompt),
            responses.texts[i],
            float(responses.rewards[i]),
            bool(responses.correct[i]),
            int(lengths[i]),
            bool(responses.truncated[i]),
            float(sums[i] / max(lengths[i], 1)),
        )
    )
  return Table(SAMPLE_COLUMNS, tuple(rows))


def _rollout_metrics(responses: rollout_lib.Responses) -> dict[str, float]:
  """Reward, accuracy, distinct correct answers, lengths and entropy of a rollout, over every
  host's rows (gathered exactly, so any number of processes gives the one-process values)."""
  sums, lengths = rollout_metrics.response_entropy_sums(
      responses.entropy, responses.completion_mask
  )
  rows = sharding.gather_host_rows(
      {
          "rewards": responses.rewards,
          "correct": responses.correct,
          "lengths": lengths,
          "truncated": responses.truncated,
          "entropy_sums": sums,
          "distinct": tasks.distinct_correct_counts(
              responses.texts, responses.correct, responses.group_ids
          ),
      }
  )
  return {
      "reward/mean": float(np.mean(rows["rewards"])),
      "accuracy/sampled": float(np.mean(rows["correct"])),
      "accuracy/distinct_correct_per_group": (
          float(np.mean(rows["distinct"])) if rows["distinct"].size else 0.0
      ),
      "response/length_mean": float(np.mean(rows["lengths"])),
      "response/truncated_frac": float(np.mean(rows["truncated"])),
      **rollout_metrics.entropy_metrics_from_sums(rows["entropy_sums"], rows["lengths"]),
  }


class RLRun:
  """The RL phase: sample → score → (dynamic sampling) → rl_update → metrics/eval/checkpoint."""

  def __init__(
      self,
      exp: Experiment,
      workdir: epath.PathLike,
      tokenizer,
      task,
      model_cfg: ModelConfig,
      params: Any,
      mesh: Mesh,
      *,
      log: bool = True,
  ):
    self.exp, self.tokenizer, self.task = exp, tokenizer, task
    self.workdir = paths.as_path(workdir)
    self.model_cfg = model_cfg
    self.cfg = exp.config
    self.log = log and jax.process_index() == 0
    self.scorer = Scorer(task, tokenizer)
    optimizer = make_optimizer(exp.rl_optimizer)
    self.lr_schedule = learning_rate_schedule(exp.rl_optimizer)
    rng = jax.random.PRNGKey(self.cfg.seed)
    self.mesh = mesh
    self.state, self.state_shardings = create_train_state_on_mesh(
        params,
        optimizer,
        jax.random.fold_in(rng, 2),
        mesh,
        interventions=interventions.init_states(exp.loss),
        with_reference=self.cfg.rl.use_reference,
    )
    self.update = make_rl_update(
        model_cfg, exp.rl, exp.loss, optimizer, mesh=self.mesh, state_sharding=self.state_shardings
    )
    rule, self.rule_owner = rollout_lib.temperature_rule(exp.loss)
    self.sampler = rollout_lib.Sampler(
        model_cfg,
        dataclasses.replace(exp.sampler, temperature_rule=rule),
        task,
        tokenizer,
        self.mesh,
    )
    self.with_clusters = "cluster_ids" in interventions.needs(exp.loss)
    if exp.rl.num_groups % jax.process_count():
      raise ValueError(
          f"rl.prompts_per_step={exp.rl.num_groups} must divide by the number of "
          f"processes ({jax.process_count()})"
      )
    self.local_groups = exp.rl.num_groups // jax.process_count()
    self.eval_rows = _host_block(exp.eval.num_prompts, "eval.num_prompts")
    self.pipeline = data_lib.make_prompt_pipeline(
        self.cfg.data,
        tokenizer,
        batch_size=self.local_groups,
        seed=self.cfg.seed,
        split="train",
        task=task,
    )
    self.eval_prompts = self._eval_set()
    self.checkpointer = Checkpointer(
        self.workdir / "checkpoints",
        save_every=self.cfg.checkpoint.save_every,
        keep=self.cfg.checkpoint.keep,
    )
    self.is_writer = jax.process_index() == 0
    self.writer = MetricWriter(
        self.workdir,
        enabled=self.is_writer,
        tensorboard=self.cfg.logging.tensorboard,
        wandb=self.cfg.logging.wandb,
        run_config=json.loads(self.cfg.source),
    )
    self.start_step = 0
    self.skipped_in_a_row = 0
    if self.checkpointer.latest_step() is not None:
      self._restore()

  def _eval_set(self) -> dict:
    pipe = data_lib.make_prompt_pipeline(
        self.cfg.data,
        self.tokenizer,
        batch_size=self.eval_rows.stop - self.eval_rows.start,
        seed=self.cfg.seed,
        split="eval",
        task=self.task,
    )
    return next(pipe)

  def _restore(self) -> None:
    state, extra, step = self.checkpointer.restore(self.state)
    self.state = state
    self.pipeline.set_state(extra["data_state"])
    self.skipped_in_a_row = int(extra.get("skipped_in_a_row", 0))
    self.start_step = step
    self.writer.truncate_after(step)
    if self.log:
      logging.info("resumed from checkpoint at RL step %d", step)

  def _save(self, step: int, *, force: bool = False) -> None:
    self.checkpointer.maybe_save(
        step,
        self.state,
        {"data_state": self.pipeline.get_state(), "skipped_in_a_row": self.skipped_in_a_row},
        force=force,
    )

  def _learning_rate(self, step: int) -> float:
    """The schedule's learning rate at RL step `step`'s first optimizer update."""
    updates_per_step = self.exp.rl.ppo_epochs * self.exp.rl.num_minibatches
    return float(self.lr_schedule((step - 1) * updates_per_step))

  def _count_skips(self, step: int, skipped: bool) -> None:
    """Counts updates skipped in a row (non-finite loss or gradient; `rl_update` left the
    state unchanged) and stops the run after `rl.max_skipped_updates` of them."""
    self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
    if skipped:
      logging.warning(
          "RL step %d: non-finite loss or gradient; update skipped (%d in a row)",
          step,
          self.skipped_in_a_row,
      )
    limit = self.cfg.rl.max_skipped_updates
    if self.skipped_in_a_row >= limit:
      last = self.checkpointer.latest_step()
      raise UpdatesNotFinite(
          f"RL steps {step - limit + 1}..{step}: {limit} updates in a row had a non-finite loss "
          f"or gradient and were skipped (params and optimizer state unchanged), so the run "
          f"stops (rl.max_skipped_updates={limit}). The last checkpoint is step {last} under "
          f"{self.checkpointer.directory}; look at reward/mean and loss/* in metrics.jsonl "
          "for NaN or inf."
      )

  def _collect(self, sample_key: jax.Array) -> tuple[dict, dict, rollout_lib.Responses]:
    """Samples, scores and (through rollout interventions) reshapes prompt batches until
    enough informative groups (dynamic sampling); returns the update's batch, its metrics and
    the first round's responses."""
    rl, cfg = self.exp.rl, self.cfg.rl
    interventions = self.state.interventions
    temperature = rollout_lib.sampling_temperature(self.exp.loss, interventions)
    per_prompt = rollout_lib.samples_per_prompt(
        self.exp.loss, rl.group_size, jax.device_get(interventions)
    )
    rule_state = interventions.get(self.rule_owner) if self.rule_owner else None
    kept: list[rollout_lib.Responses] = []
    keeps: list[np.ndarray] = []
    n_kept = rounds = 0
    while n_kept < self.local_groups:
      rounds += 1
      prompts = next(self.pipeline)
      key = jax.random.fold_in(sample_key, rounds)
      sample = functools.partial(
          self.sampler, self.state.params, temperature=temperature, rule_state=rule_state
      )
      responses = sample(
          prompts["prompt_tokens"],
          prompts["prompt_lengths"],
          prompts["examples"],
          np.arange(self.local_groups),
          per_prompt,
          key,
      )
      ctx = rollout_lib.RolloutContext(
          sample=sample,
          answer_keys=self.sampler.answer_keys,
          group_size=rl.group_size,
          min_prompt_bucket=self.cfg.data.max_prompt_len,
          pad_id=self.tokenizer.pad_id,
          stop_ids=self.exp.sampler.stop_ids,
          key=jax.random.fold_in(key, 1),
          step_delimiter_id=rl.step_delimiter_id,
          decode=self.tokenizer.decode,
      )
      responses = rollout_lib.reshape(self.exp.loss, responses, ctx, interventions)
      if self.with_clusters:
        responses.info["cluster_ids"] = tasks.answer_clusters(
            self.sampler.answer_keys(responses, cfg.cluster_by), responses.group_ids
        )
      keep = (
          rollout_metrics.group_filter(responses.rewards, rl.group_size)
          if cfg.dynamic_sampling
          else np.ones(self.local_groups, bool)
      )
      kept.append(responses)
      keeps.append(keep)
      n_kept += int(keep.sum())
      if not cfg.dynamic_sampling or rounds >= cfg.max_gen_batches:
        break
      if jax.process_count() > 1:  # every host samples the same number of rounds
        n_kept = int(multihost_utils.process_allgather(np.int32(n_kept)).min())
    batch, filled = self._assemble(kept, keeps)
    groups = sharding.gather_host_rows({"kept": sum(int(k.sum()) for k in keeps), "filled": filled})
    metrics = {
        "dynamic_sampling/gen_rounds": rounds,
        "dynamic_sampling/kept_groups": int(groups["kept"].sum()),
        "dynamic_sampling/filled_groups": int(groups["filled"].sum()),
        **_rollout_metrics(kept[0]),
    }
    return batch, metrics, kept[0]

  def _assemble(
      self, kept: list[rollout_lib.Responses], keeps: list[np.ndarray]
  ) -> tuple[dict, int]:
    """Concatenates kept groups (then, if short, filtered-out groups) into exactly G groups."""
    rl = self.exp.rl
    chosen, fallback = [], []
    for part, keep in zip(kept, keeps):
      for j, ok in enumerate(keep):
        (chosen if ok else fallback).append(part.take(np.flatnonzero(part.group_ids == j)))
    filled = max(0, self.local_groups - len(chosen))
    rows = rollout_lib.Responses.concat(
        (chosen + fallback)[: self.local_groups], self.tokenizer.pad_id
    )
    width = rows.prompt_tokens.shape[1]
    prompt_mask = np.arange(width)[None, :] >= (width - rows.prompt_lengths)[:, None]
    batch = batching.rl_batch(
        rows.prompt_tokens,
        prompt_mask,
        rows.completion_tokens,
        rows.completion_mask,
        rows.rewards,
        np.repeat(
            np.arange(self.local_groups) + jax.process_index() * self.local_groups, rl.group_size
        ),
    )
    info = dict(rows.info)
    if "cluster_ids" in info:
      batch["cluster_ids"] = info.pop("cluster_ids")
    if info:
      batch["info"] = info
    if rl.old_logp_from_rollout:
      batch["old_logp"], batch["old_entropy"] = rows.logp, rows.entropy
    return self._trim(batch), filled

  def _trim(self, batch: dict) -> dict:
    """`batching.trim_completions` at the step's longest completion over all hosts."""
    longest = int(batch["completion_mask"].sum(axis=1).max(initial=1))
    if jax.process_count() > 1:
      longest = int(multihost_utils.process_allgather(np.int32(longest)).max())
    return batching.trim_completions(
        batch,
        budget=self.exp.sampler.max_new_tokens,
        buckets=self.cfg.rl.completion_buckets,
        longest=longest,
    )

  def _evaluate(self, step: int) -> dict[str, float]:
    ex = self.eval_prompts
    examples = ex["examples"]
    return evaluate(
        self.model_cfg,
        self.state.params,
        ex["prompt_tokens"],
        ex["prompt_lengths"],
        lambda idx, texts: self.scorer.score([examples[i] for i in idx], texts),
        self.scorer.decode,
        self.exp.sampler,
        self.exp.eval,
        jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed + 7), step),
        mesh=self.mesh,
    )

  def run(self) -> list[dict[str, float]]:
    """Runs the remaining RL steps; returns the metrics logged by this call."""
    total = self.cfg.rl.steps
    guard = PreemptionGuard()
    preempted = False
    progress = Progress(
        total,
        start_step=self.start_step,
        every=self.cfg.logging.console_every,
        keys=CONSOLE_KEYS,
        label=method_name(self.cfg),
        enabled=self.log,
    )
    history = []
    step = self.start_step
    if self.start_step == 0 and self.exp.eval.every:
      history.append(self.writer.write(0, self._evaluate(0)))
    try:
      for step in range(self.start_step + 1, total + 1):
        t0 = time.perf_counter()
        rng, sample_key = jax.random.split(self.state.rng)
        self.state = self.state.replace(rng=rng)
        batch, metrics, responses = self._collect(sample_key)
        t_sample = time.perf_counter() - t0
        self.state, update_metrics = self.update(self.state, sharding.to_global(batch, self.mesh))
        metrics.update(jax.device_get(update_metrics))
        elapsed = time.perf_counter() - t0
        tokens = float(sharding.gather_host_rows(batch["completion_mask"].sum()).sum())
        metrics["optimizer/learning_rate"] = self._learning_rate(step)
        metrics.update(
            {
                "time/step_s": elapsed,
                "time/sample_s": t_sample,
                "time/update_s": elapsed - t_sample,
                "time/tokens_per_s": tokens / elapsed,
            }
        )
        if self.exp.eval.every and (step % self.exp.eval.every == 0 or step == total):
          metrics.update(self._evaluate(step))
        history.append(self.writer.write(step, metrics))
        every = self.cfg.logging.samples_every
        if every and (step % every == 0 or step == total):
          self.writer.write_table(
              step,
              "samples",
              samples_table(responses, self.tokenizer.decode, self.cfg.logging.num_samples),
          )
        progress.update(step, history[-1])
        self._count_skips(step, bool(metrics["update/skipped"]))
        preempted = preemption_agreed(guard, self.checkpointer, step)
        self._save(step, force=preempted or step == total)
        if preempted:
          break
    finally:
      guard.restore_handlers()
      self.writer.close()
      self.checkpointer.close()
    if preempted:
      raise Preempted(step, self.checkpointer.directory)
    if step == total and self.is_writer:
      (self.workdir / "DONE").touch()
    return history


def run(
    config: ml_collections.ConfigDict | ExperimentConfig,
    workdir: epath.PathLike,
    *,
    log: bool = True,
) -> list[dict[str, float]]:
  """Runs an experiment end to end in `workdir` (local or `gs://`; resuming if it holds a
  checkpoint).

  Raises:
    Preempted: after saving a checkpoint on SIGTERM or a preemption sync point.
    UpdatesNotFinite: after `rl.max_skipped_updates` skipped updates in a row.
  """
  spec = typed(config)
  tokenizer = make_tokenizer(spec)
  exp = resolve(spec, tokenizer=tokenizer)
  check_layout(exp)
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  task = tasks.get_task(spec.task.name, **spec.task.kwargs)
  if jax.process_index() == 0:
    _write_run_info(workdir, exp, method_name(spec))
  mesh = sharding.make_mesh(spec.mesh.as_dict())
  if spec.model.init == "checkpoint":
    model_cfg, params = hf.load(
        spec.model.checkpoint,
        param_dtype=spec.model.param_dtype,
        compute_dtype=spec.model.compute_dtype,
        shardings=sharding.param_shardings(exp.model, mesh),
        **spec.model.runtime,
    )
  elif spec.sft.steps > 0:
    sft_dir = paths.as_path(spec.sft.shared_dir) if spec.sft.shared_dir else workdir
    model_cfg, params = run_sft(exp, sft_dir, tokenizer, task, log=log)
  else:
    model_cfg = exp.model
    params = jax.jit(
        functools.partial(init_params, model_cfg),
        out_shardings=sharding.param_shardings(model_cfg, mesh),
    )(jax.random.PRNGKey(spec.seed))
  return RLRun(exp, workdir, tokenizer, task, model_cfg, params, mesh, log=log).run()
