"""Orbax checkpoints of the train state plus JSON side data (data iterator, loop counters).

`Checkpointer` is an `ocp.CheckpointManager` used the way Orbax intends: saves are
asynchronous (the state is copied to host memory, then written by a background thread while
training goes on), the cadence is the manager's save policy (every `save_every` steps, and at a
preemption sync point), and every save goes to a
temporary directory that is renamed only when complete, so a killed writer never leaves a
checkpoint that looks finished (leftover temporaries are removed when the manager opens).
Directories are `etils.epath` paths, so `gs://` workdirs work without a mount.

`PreemptionGuard` turns SIGTERM (TPU preemption) and SIGINT (Ctrl-C) into a request to save
and stop after the current step (a second Ctrl-C exits at once); `stop_agreed` makes every host
stop at the same step, through JAX's preemption sync point where the distributed runtime has
one, and an all-gather of the hosts' requests otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from entropix_rl import param_shapes
from entropix_rl.checks import check_int

# The exit code of a run that stopped after saving because it was preempted (SIGTERM, or the
# distributed runtime's preemption notice; sysexits' EX_TEMPFAIL: "try again later").
# launch/sweep.py and launch/run.sh resume such runs.
PREEMPTED_EXIT_CODE = 75
# The exit code of a run stopped with Ctrl-C (128 + SIGINT): after saving the step it was in,
# or, on a second Ctrl-C, at once with its last finished checkpoint. Re-run to resume.
INTERRUPTED_EXIT_CODE = 130


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """`config.checkpoint`: save_every (RL steps between saves; also at the end and on
  preemption) and keep (the last K checkpoints)."""

  save_every: int = 100
  keep: int = 2

  def __post_init__(self):
    check_int("checkpoint.save_every", self.save_every)
    check_int("checkpoint.keep", self.keep)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; names the directory and step."""


class Checkpointer:
  """A thin wrapper around `ocp.CheckpointManager` with items `state` and `extra`."""

  def __init__(self, directory: str | epath.Path, *, save_every: int, keep: int):
    if save_every <= 0:
      raise ValueError(f"checkpoint.save_every={save_every} must be a positive number of steps")
    if keep <= 0:
      raise ValueError(f"checkpoint.keep={keep} must be >= 1")
    self.directory = epath.Path(directory)
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=True,
        cleanup_tmp_directories=True,
        save_decision_policy=policies.AnySavePolicy(
            [policies.FixedIntervalPolicy(save_every), policies.PreemptionCheckpointingPolicy()]
        ),
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "extra")
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def reached_preemption(self, step: int) -> bool:
    """Whether JAX's distributed runtime reports a preemption sync point at `step`."""
    return self._manager.reached_preemption(step)

  def maybe_save(self, step: int, state: Any, extra: dict, *, force: bool = False) -> bool:
    """Starts saving `step` when the cadence (every `save_every` steps) asks for it, or when
    `force`; returns whether a save started. The write finishes in the background; an error
    of an earlier write is raised here (or by `close`) as `CheckpointError`.
    """
    if step in self._manager.all_steps():
      return False
    try:
      return self._manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)
          ),
          force=force,
      )
    except Exception as err:
      raise CheckpointError(
          f"saving checkpoint step {step} under {self.directory} failed: "
          f"{type(err).__name__}: {err}"
      ) from err

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores `step` (default: latest) into the structure/shardings of `abstract_state`.

    Raises:
      FileNotFoundError: no checkpoint.
      ValueError: a param whose stored shape differs from `abstract_state`'s (a checkpoint
        from another model config), naming the param and both shapes.
    """
    self.wait()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    _check_stored_shapes(self.directory, step, abstract)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], dict(restored["extra"]), step

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores only the policy params of `step` (default: latest) into the shapes, dtypes and
    shardings of `abstract_params` (for export and evaluation, without the optimizer state)."""
    self.wait()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    if step not in self.all_steps():
      raise FileNotFoundError(
          f"no checkpoint step {step} under {self.directory}; steps: " f"{self.all_steps()}"
      )
    _check_stored_shapes(self.directory, step, {"params": abstract_params})
    abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)}
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True,
            )
        ),
    )
    return restored["state"]["params"], step

  def wait(self) -> None:
    """Blocks until the save in flight (if any) is complete; raises `CheckpointError` if it
    failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as err:
      raise CheckpointError(
          f"writing a checkpoint under {self.directory} failed: " f"{type(err).__name__}: {err}"
      ) from err

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()


def _check_stored_shapes(directory: str, step: int, abstract: Any) -> None:
  """Compares the shapes in step `step`'s `state` metadata with `abstract`'s before restoring
  (a fresh manager cannot read item metadata before its first restore, so the handler reads it)."""
  step_dir = ocp.step.standard_name_format().find_step(epath.Path(directory), step).path
  stored = ocp.StandardCheckpointHandler().metadata(step_dir / "state")
  param_shapes.check_same_shapes(
      f"checkpoint {directory} step {step}",
      param_shapes.shapes_by_name(getattr(stored, "tree", stored)),
      param_shapes.shapes_by_name(abstract),
      same_names=False,
  )


def saved_steps(directory: epath.PathLike) -> list[int]:
  """The finished checkpoint steps under `directory`, ascending (none when it does not exist),
  read without opening a manager, so nothing is created or cleaned up."""
  directory = epath.Path(directory)
  if not directory.exists():
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))


class PreemptionGuard:
  """Turns SIGTERM (preemption) and SIGINT (Ctrl-C) into a request to save and stop after the
  current step, instead of dying mid-step. A second Ctrl-C exits at once (`os._exit`) with
  `INTERRUPTED_EXIT_CODE`: a checkpoint being written then is discarded (saves are renamed only
  when complete), so the last finished one is what a re-run resumes from."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    self.requested: int | None = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested == signal.SIGINT:
      logging.warning(
          "second Ctrl-C: exiting now (code %d); a re-run resumes from the last finished "
          "checkpoint",
          INTERRUPTED_EXIT_CODE,
      )
      logging.flush()
      os._exit(INTERRUPTED_EXIT_CODE)
    if signum == signal.SIGINT:
      logging.warning("Ctrl-C: will checkpoint and exit after this step (Ctrl-C again: exit now)")
    else:
      logging.warning("received signal %d: will checkpoint and exit after this step", signum)
    self.requested = signal.SIGINT if signal.SIGINT in (signum, self.requested) else signum

  @property
  def exit_code(self) -> int:
    """0 with no request, else the code the run exits with after saving."""
    if self.requested is None:
      return 0
    return INTERRUPTED_EXIT_CODE if self.requested == signal.SIGINT else PREEMPTED_EXIT_CODE

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def stop_agreed(guard: PreemptionGuard, checkpointer: Checkpointer, step: int) -> int:
  """The exit code every host stops with after `step`, or 0 to go on: `INTERRUPTED_EXIT_CODE`
  when some host got Ctrl-C, `PREEMPTED_EXIT_CODE` when one got SIGTERM or the distributed
  runtime reached a preemption sync point. Every host calls this at every step, so all of them
  answer alike for the same step (no host waits on a save the others skip)."""
  code = guard.exit_code or (PREEMPTED_EXIT_CODE if checkpointer.reached_preemption(step) else 0)
  if jax.process_count() == 1:
    return code
  return int(multihost_utils.process_allgather(np.int32(code)).max())
