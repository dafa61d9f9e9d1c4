"""The run loop: a typed config → the starting policy → RL steps, logged, evaluated and saved.

One RL step (`docs/design.md` follows it through the files): `collect` the step's rollout
(train/rollout.py) → `update` the policy on it (train/update.py) → write its metrics, evaluate
and save at their cadences. Re-running with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.sharding import Mesh

from entropix_rl import console, data, interventions, paths, sharding
from entropix_rl.models import hf, init_params
from entropix_rl.train import config_dict, evaluation, rollout, rollout_metrics, run_record, sft
from entropix_rl.train.checkpoint import (
    INTERRUPTED_EXIT_CODE,
    Checkpointer,
    PreemptionGuard,
    saved_steps,
    stop_agreed,
)
from entropix_rl.train.config import (
    Experiment,
    ExperimentConfig,
    check_inputs,
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
    config: ExperimentConfig,
    workdir: epath.PathLike,
    *,
    log: bool = True,
    allow_config_change: bool = False,
) -> list[dict[str, float]]:
  """Runs an experiment end to end in `workdir` (local or `gs://`), resuming from its latest
  checkpoint; returns the metrics this call logged (none when the run had nothing left to do).

  Raises:
    ConfigChanged: the workdir holds a run of another config (`train.run_record`), unless
      `allow_config_change`.
    Stopped: after saving a checkpoint on SIGTERM, Ctrl-C or a preemption sync point.
    UpdatesNotFinite: after `rl.max_skipped_updates` skipped updates in a row.
  """
  workdir, total = paths.as_path(workdir), config.rl.steps
  info = run_record.read(workdir)
  changed = (
      {} if info is None else run_record.check_rerun(info, config, allow_change=allow_config_change)
  )
  saved = saved_steps(workdir / "checkpoints")
  if saved and saved[-1] >= total:
    if log:
      logging.info(
          "%s: finished at RL step %d (rl.steps=%d); nothing to do", workdir, saved[-1], total
      )
    return []
  rl_run = RLRun.start(config, workdir, changed=changed, log=log)
  step, history, started = rl_run.start_step, [], time.perf_counter()
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
      step_started = time.perf_counter()
      batch, responses, metrics = rl_run.collect(rl_run.next_key())
      sampled = time.perf_counter()
      metrics.update(rollout_metrics.response_metrics(responses))
      metrics.update(rl_run.update(step, batch))
      metrics.update(rl_run.step_facts(step, batch, step_started, sampled))
      if config.eval.every and (step % config.eval.every == 0 or step == total):
        metrics.update(rl_run.evaluate(step))
      history.append(rl_run.writer.write(step, metrics))
      rl_run.write_samples(step, responses)
      progress.update(step, history[-1])
      rl_run.count_skips(step, bool(metrics["update/skipped"]))
      stop = stop_agreed(guard, rl_run.checkpointer, step)
      rl_run.save(step, force=bool(stop) or step == total)
      if stop:
        raise Stopped(step, rl_run.checkpointer.directory, stop)
  finally:
    guard.restore_handlers()
    rl_run.close()
  if jax.process_index() == 0:
    (workdir / "DONE").touch()
    if log:
      logging.info("%s", closing_line(workdir, config, time.perf_counter() - started))
  return history


class Stopped(Exception):
  """The run saved a checkpoint and stopped, preempted (SIGTERM, or a preemption sync point of
  the distributed runtime) or interrupted (Ctrl-C); run it again to resume.

  Attributes:
    step: the RL step it saved.
    exit_code: `checkpoint.PREEMPTED_EXIT_CODE` or `checkpoint.INTERRUPTED_EXIT_CODE`.
  """

  def __init__(self, step: int, directory: epath.Path, exit_code: int):
    how = "interrupted (Ctrl-C)" if exit_code == INTERRUPTED_EXIT_CODE else "preempted"
    super().__init__(
        f"{how}: checkpoint saved at RL step {step} in {directory}; run the same "
        "command again to resume"
    )
    self.step, self.exit_code = step, exit_code


class UpdatesNotFinite(RuntimeError):
  """Several RL updates in a row had a non-finite loss or gradient and were skipped."""


class RLRun:
  """The state of a run between steps: the train state, the jitted update, the samplers'
  prompts, the checkpointer and the metric writer.

  Attributes:
    exp: the resolved experiment.
    mesh: the device mesh.
    state: the train state (`TrainState`), replaced by every update.
    rl_updates: the jitted `train.update.rl_update`, lean (False) and measuring the entropy
      change (True); each compiles on its first use.
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
    self.rl_updates = {
        measured: jit_rl_update(
            UpdateSpec.of(exp, measure_dynamics=measured),
            optimizer,
            mesh=mesh,
            state_sharding=state_sharding,
        )
        for measured in (False, True)
    }
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
    elif (workdir / "metrics.jsonl").exists():  # an earlier attempt that never saved
      self.writer.truncate_after(-1)

  @classmethod
  def start(
      cls,
      config: ExperimentConfig,
      workdir: epath.Path,
      *,
      changed: dict | None = None,
      log: bool = True,
  ) -> RLRun:
    """Resolves and checks `config` (its warm start's settings too), records the run
    (`run_record.write`: a new run's `run_info.json`, or the changes a re-run makes), and
    builds it: from the starting policy, or, when it resumes, from any params of the right
    shapes that the checkpoint then replaces."""
    exp = resolve(config)
    mesh = sharding.make_mesh(config.mesh)
    check_layout(config, mesh)
    check_inputs(exp)
    resumed_at = (saved_steps(workdir / "checkpoints") or [0])[-1]
    warm_start = paths.resolve(workdir, config.sft.shared_dir) / "sft"
    uses_warm_start = config.model.init == "random" and config.sft.steps > 0
    if not resumed_at and uses_warm_start and (warm_start / "config.json").exists():
      sft.check_settings(warm_start, config)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
      run_record.write(workdir, exp, changed=changed, at_step=resumed_at)
      if log:
        logging.info("%s", _opening_line(exp, mesh, workdir, resumed_at, changed))
    if resumed_at:
      params = random_params(exp, mesh)
    else:
      params = starting_params(exp, warm_start.parent, mesh, log=log)
    return cls(exp, workdir, params, mesh)

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

  def update(self, step: int, batch: dict) -> dict[str, float]:
    """RL step `step`'s update on this host's rows of the batch (measuring the entropy change
    every `rl.dynamics_every` steps); returns its metrics."""
    rl_update = self.rl_updates[self.exp.config.rl.measures_dynamics(step)]
    self.state, metrics = rl_update(self.state, sharding.to_global(batch, self.mesh))
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
    """Counts RL steps in a row that skipped a non-finite optimizer update (`rl_update` did
    not apply it) and stops the run after `rl.max_skipped_updates` of them."""
    self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
    if skipped:
      logging.warning(
          "RL step %d: non-finite loss or gradient; its update skipped (%d steps in a row)",
          step,
          self.skipped_in_a_row,
      )
    limit = self.exp.config.rl.max_skipped_updates
    if self.skipped_in_a_row >= limit:
      raise UpdatesNotFinite(
          f"RL steps {step - limit + 1}..{step}: {limit} steps in a row had a non-finite loss "
          f"or gradient, whose updates were skipped (not applied to the params and optimizer "
          f"state), so the run "
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


def starting_params(
    exp: Experiment, warm_start_dir: epath.Path, mesh: Mesh, *, log: bool = True
) -> Any:
  """The policy RL starts from, placed on `mesh`: a Hugging Face checkpoint
  (`model.init="checkpoint"`), else the SFT warm start in `warm_start_dir/sft` (`sft.steps >
  0`; `sft.shared_dir`, relative to the run's workdir unless absolute), else random init."""
  cfg = exp.config
  if cfg.model.init == "checkpoint":
    _, params = hf.load(
        cfg.model.checkpoint,
        param_dtype=cfg.model.param_dtype,
        compute_dtype=cfg.model.compute_dtype,
        shardings=sharding.param_shardings(exp.model, mesh),
        expected=exp.model,
        **cfg.model.runtime,
    )
    return params
  if cfg.sft.steps > 0:
    _, params = sft.warm_start(exp, warm_start_dir, mesh, log=log)
    return params
  return random_params(exp, mesh)


def random_params(exp: Experiment, mesh: Mesh) -> Any:
  """The model's random init (seed `config.seed`), each param created in its sharding."""
  init = functools.partial(init_params, exp.model)
  shardings = sharding.param_shardings(exp.model, mesh)
  return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(exp.config.seed))


def _opening_line(
    exp: Experiment, mesh: Mesh, workdir: epath.Path, resumed_at: int, changed: dict | None
) -> str:
  """What a run says when it starts: the method, the model, the devices, the workdir."""
  cfg, model = exp.config, exp.model
  devices = jax.devices()
  mesh_shape = " x ".join(f"{axis} {size}" for axis, size in mesh.shape.items())
  start = f"resuming at RL step {resumed_at}" if resumed_at else "starting"
  line = (
      f"{start} {method_name(cfg)} (loss.name={cfg.loss.name}, rl.advantage={cfg.rl.advantage}) "
      f"for {cfg.rl.steps} RL steps of {cfg.rl.prompts_per_step} prompts x {cfg.rl.group_size}: "
      f"{model.model_type} model, {model.num_params() / 1e6:.3g}M params "
      f"({model.num_params(include_embeddings=False) / 1e6:.3g}M non-embedding, "
      f"{model.param_dtype}); {len(devices)} {devices[0].platform} device(s), mesh {mesh_shape}, "
      f"{jax.process_count()} process(es); workdir {workdir}"
  )
  if changed:
    line += "; config changed: " + ", ".join(f"{k}={new!r}" for k, (_, new) in changed.items())
  return line


def closing_line(workdir: epath.Path, config: ExperimentConfig, seconds: float) -> str:
  """What a finished run says last: where its outputs are and the commands that read them."""
  outputs = "metrics.jsonl, run_info.json, checkpoints/"
  if config.logging.tensorboard:
    outputs += ", tensorboard/"
  if config.logging.samples_every:
    outputs += ", tables/samples.jsonl"
  return (
      f"finished {config.rl.steps} RL steps in {seconds / 60:.1f} min; outputs in {workdir}: "
      f"{outputs}. Next: evaluate `python experiments/evaluate.py --workdir={workdir}`, export "
      f"`python experiments/export_hf.py --workdir={workdir} --out={workdir}/hf`, fit the law "
      f"`python experiments/fit_law.py --workdirs={workdir} --out={workdir}/law`, curves "
      f"`tensorboard --logdir={workdir}`"
  )
