"""The run loop: a typed config → the starting policy → RL steps, logged, evaluated and saved.

One RL step (`docs/design.md` follows it through the files): `collect` the step's rollout
(train/rollout.py) → `update` the policy on it (train/update.py) → write its metrics, evaluate
and save at their cadences. Re-running with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.sharding import Mesh

from entropix_rl import console, data, interventions, paths, sharding
from entropix_rl.models import hf, init_params
from entropix_rl.train import config_dict, evaluation, rollout, rollout_metrics, sft
from entropix_rl.train.checkpoint import Checkpointer, PreemptionGuard, preemption_agreed
from entropix_rl.train.config import (
    Experiment,
    ExperimentConfig,
    check_layout,
    method_name,
    resolve,
)
from entropix_rl.train.metrics import MetricWriter
from entropix_rl.train.optim import learning_rate_schedule, make_optimizer
from entropix_rl.train.state import create_train_state_on_mesh
from entropix_rl.train.update import UpdateSpec, jit_rl_update

CONSOLE_KEYS = (
    "entropy/paper",
    "reward/mean",
    "accuracy/distinct_correct_per_group",
    "eval/sampled_accuracy",
    "eval/greedy_accuracy",
)


def run(
    config: ExperimentConfig, workdir: epath.PathLike, *, log: bool = True
) -> list[dict[str, float]]:
  """Runs an experiment end to end in `workdir` (local or `gs://`), resuming from its latest
  checkpoint; returns the metrics this call logged.

  Raises:
    Preempted: after saving a checkpoint on SIGTERM or a preemption sync point.
    UpdatesNotFinite: after `rl.max_skipped_updates` skipped updates in a row.
  """
  rl_run = RLRun.start(config, workdir, log=log)
  total, step, history = config.rl.steps, rl_run.start_step, []
  progress = console.Progress(
      total,
      start_step=step,
      every=config.logging.console_every,
      keys=CONSOLE_KEYS,
      label=method_name(config),
      enabled=log and jax.process_index() == 0,
  )
  guard = PreemptionGuard()
  try:
    if step == 0 and config.eval.every:
      history.append(rl_run.writer.write(0, rl_run.evaluate(0)))
    for step in range(rl_run.start_step + 1, total + 1):
      started = time.perf_counter()
      batch, responses, metrics = rl_run.collect(rl_run.next_key())
      sampled = time.perf_counter()
      metrics.update(rollout_metrics.response_metrics(responses))
      metrics.update(rl_run.update(batch))
      metrics.update(rl_run.step_facts(step, batch, started, sampled))
      if config.eval.every and (step % config.eval.every == 0 or step == total):
        metrics.update(rl_run.evaluate(step))
      history.append(rl_run.writer.write(step, metrics))
      rl_run.write_samples(step, responses)
      progress.update(step, history[-1])
      rl_run.count_skips(step, bool(metrics["update/skipped"]))
      preempted = preemption_agreed(guard, rl_run.checkpointer, step)
      rl_run.save(step, force=preempted or step == total)
      if preempted:
        raise Preempted(step, rl_run.checkpointer.directory)
  finally:
    guard.restore_handlers()
    rl_run.close()
  if step == total and jax.process_index() == 0:
    (paths.as_path(workdir) / "DONE").touch()
  return history


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


class RLRun:
  """The state of a run between steps: the train state, the jitted update, the samplers'
  prompts, the checkpointer and the metric writer.

  Attributes:
    exp: the resolved experiment.
    mesh: the device mesh.
    state: the train state (`TrainState`), replaced by every update.
    rl_update: the jitted `train.update.rl_update`.
    lr_schedule: the RL optimizer's learning rate by optimizer update.
    sampler: the rollout sampler (`rollout.Sampler.for_training`).
    prompts: this host's training prompts (a checkpointed Grain iterator).
    eval_prompts: this host's held-out prompts.
    checkpointer: the run's checkpoints.
    writer: the metric writer.
    start_step: the RL step the run resumed from (0 for a fresh run).
    skipped_in_a_row: RL steps in a row whose update was skipped (non-finite).
  """

  def __init__(self, exp: Experiment, workdir: epath.PathLike, params: Any, mesh: Mesh):
    cfg, workdir = exp.config, paths.as_path(workdir)
    self.exp, self.mesh = exp, mesh
    optimizer = make_optimizer(cfg.optimizer)
    self.state, state_sharding = create_train_state_on_mesh(
        params,
        optimizer,
        jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 2),
        mesh,
        interventions=interventions.init_states(exp.loss),
        with_reference=cfg.rl.use_reference,
    )
    self.rl_update = jit_rl_update(
        UpdateSpec.of(exp), optimizer, mesh=mesh, state_sharding=state_sharding
    )
    self.lr_schedule = learning_rate_schedule(cfg.optimizer)
    self.sampler = rollout.Sampler.for_training(exp, mesh)
    hosts = jax.process_count()
    prompt_batches = functools.partial(
        data.make_prompt_pipeline, cfg.data, exp.tokenizer, seed=cfg.seed, task=exp.task
    )
    self.prompts = prompt_batches(batch_size=cfg.rl.prompts_per_step // hosts, split="train")
    self.eval_prompts = next(prompt_batches(batch_size=cfg.eval.num_prompts // hosts, split="eval"))
    self.checkpointer = Checkpointer(
        workdir / "checkpoints",
        save_every=cfg.checkpoint.save_every,
        keep=cfg.checkpoint.keep,
    )
    self.writer = MetricWriter(
        workdir,
        enabled=jax.process_index() == 0,
        tensorboard=cfg.logging.tensorboard,
        wandb=cfg.logging.wandb,
        run_config=config_dict.as_config_dict(cfg).to_dict(),
    )
    self.start_step, self.skipped_in_a_row = 0, 0
    if self.checkpointer.latest_step() is not None:
      self._restore()

  @classmethod
  def start(cls, config: ExperimentConfig, workdir: epath.PathLike, *, log: bool = True) -> RLRun:
    """Resolves and checks `config`, records `run_info.json`, and builds the run from the
    starting policy (`starting_params`)."""
    exp = resolve(config)
    mesh = sharding.make_mesh(config.mesh)
    check_layout(config, mesh)
    workdir = paths.as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
      write_run_info(workdir, exp)
    return cls(exp, workdir, starting_params(exp, workdir, mesh, log=log), mesh)

  def next_key(self) -> jax.Array:
    """This step's sampling key, split from the train state's (so a resume continues it)."""
    rng, key = jax.random.split(self.state.rng)
    self.state = self.state.replace(rng=rng)
    return key

  def collect(self, key: jax.Array) -> tuple[dict, rollout.Responses, dict[str, float]]:
    """This step's rollout: `rollout.collect` with the current policy and intervention states."""
    return rollout.collect(
        self.exp, self.sampler, self.prompts, self.state.params, self.state.interventions, key
    )

  def update(self, batch: dict) -> dict[str, float]:
    """One RL update on this host's rows of the step's batch; returns its metrics."""
    self.state, metrics = self.rl_update(self.state, sharding.to_global(batch, self.mesh))
    return jax.device_get(metrics)

  def step_facts(self, step: int, batch: dict, started: float, sampled: float) -> dict:
    """The step's learning rate (at its first optimizer update) and timings."""
    elapsed = time.perf_counter() - started
    tokens = float(sharding.gather_host_rows(batch["completion_mask"].sum()).sum())
    first_update = (step - 1) * self.exp.config.rl.updates_per_step
    return {
        "optimizer/learning_rate": float(self.lr_schedule(first_update)),
        "time/step_s": elapsed,
        "time/sample_s": sampled - started,
        "time/update_s": elapsed - (sampled - started),
        "time/tokens_per_s": tokens / elapsed,
    }

  def evaluate(self, step: int) -> dict[str, float]:
    """Greedy and sampled accuracy on the held-out prompts (`train.evaluation`)."""
    exp = self.exp
    sampler = rollout.Sampler(exp.model, exp.sampler, exp.task, exp.tokenizer, self.mesh)
    key = jax.random.fold_in(jax.random.PRNGKey(exp.config.seed + 7), step)
    return evaluation.evaluate(sampler, self.state.params, self.eval_prompts, exp.config.eval, key)

  def write_samples(self, step: int, responses: rollout.Responses) -> None:
    """The step's first rollout rows as a table, every `logging.samples_every` steps."""
    logging_cfg, total = self.exp.config.logging, self.exp.config.rl.steps
    every = logging_cfg.samples_every
    if every and (step % every == 0 or step == total):
      table = rollout_metrics.samples_table(
          responses, self.exp.tokenizer.decode, logging_cfg.num_samples
      )
      self.writer.write_table(step, "samples", table)

  def count_skips(self, step: int, skipped: bool) -> None:
    """Counts updates skipped in a row (non-finite loss or gradient; `rl_update` left the
    state unchanged) and stops the run after `rl.max_skipped_updates` of them."""
    self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
    if skipped:
      logging.warning(
          "RL step %d: non-finite loss or gradient; update skipped (%d in a row)",
          step,
          self.skipped_in_a_row,
      )
    limit = self.exp.config.rl.max_skipped_updates
    if self.skipped_in_a_row >= limit:
      raise UpdatesNotFinite(
          f"RL steps {step - limit + 1}..{step}: {limit} updates in a row had a non-finite loss "
          f"or gradient and were skipped (params and optimizer state unchanged), so the run "
          f"stops (rl.max_skipped_updates={limit}). The last checkpoint is step "
          f"{self.checkpointer.latest_step()} under {self.checkpointer.directory}; look at "
          "reward/mean and loss/* in metrics.jsonl for NaN or inf."
      )

  def save(self, step: int, *, force: bool = False) -> None:
    """Saves `step` at the checkpoint cadence (or now, with `force`), with the data
    iterator's position and the skip counter."""
    self.checkpointer.maybe_save(
        step,
        self.state,
        {"data_state": self.prompts.get_state(), "skipped_in_a_row": self.skipped_in_a_row},
        force=force,
    )

  def close(self) -> None:
    self.writer.close()
    self.checkpointer.close()

  def _restore(self) -> None:
    state, extra, step = self.checkpointer.restore(self.state)
    self.state = state
    self.prompts.set_state(extra["data_state"])
    self.skipped_in_a_row = int(extra.get("skipped_in_a_row", 0))
    self.start_step = step
    self.writer.truncate_after(step)
    logging.info("resumed from checkpoint at RL step %d", step)


def starting_params(exp: Experiment, workdir: epath.Path, mesh: Mesh, *, log: bool = True) -> Any:
  """The policy RL starts from, placed on `mesh`: a Hugging Face checkpoint
  (`model.init="checkpoint"`), else the SFT warm start (`sft.steps > 0`, shared through
  `sft.shared_dir`), else random init."""
  cfg = exp.config
  shardings = sharding.param_shardings(exp.model, mesh)
  if cfg.model.init == "checkpoint":
    _, params = hf.load(
        cfg.model.checkpoint,
        param_dtype=cfg.model.param_dtype,
        compute_dtype=cfg.model.compute_dtype,
        shardings=shardings,
        expected=exp.model,
        **cfg.model.runtime,
    )
    return params
  if cfg.sft.steps > 0:
    _, params = sft.warm_start(exp, cfg.sft.shared_dir or workdir, mesh, log=log)
    return params
  init = functools.partial(init_params, exp.model)
  return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(cfg.seed))


def write_run_info(workdir: epath.Path, exp: Experiment) -> None:
  """`workdir/run_info.json`: the method's name, the whole config and the model's facts (its
  non-embedding parameter count is what the law's size fit reads)."""
  info = {
      "method": method_name(exp.config),
      "config": config_dict.as_config_dict(exp.config).to_dict(),
      "model": dataclasses.asdict(exp.model),
      "non_embedding_params": exp.model.num_params(include_embeddings=False),
      "params": exp.model.num_params(),
      "process_count": jax.process_count(),
      "device_count": jax.device_count(),
  }
  (workdir / "run_info.json").write_text(json.dumps(info, indent=2, default=str))
