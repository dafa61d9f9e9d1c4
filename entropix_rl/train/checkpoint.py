"""Orbax checkpoints of the train state plus JSON side data (data iterator, loop counters).

Saves every N steps and at the end, keeps the last K, restores exactly. Orbax writes into a
temporary directory and renames it when complete, so an interrupted save never leaves a
checkpoint that looks finished. `PreemptionGuard` turns SIGTERM (TPU preemption) into a flag
the loop polls, so the loop can save and exit cleanly between steps.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from entropix_rl import param_shapes


class Checkpointer:
  """A thin wrapper around `ocp.CheckpointManager` with items `state` and `extra`."""

  def __init__(self, directory: str, *, save_every: int, keep: int):
    if save_every <= 0:
      raise ValueError(f"checkpoint.save_every={save_every} must be a positive number of steps")
    if keep <= 0:
      raise ValueError(f"checkpoint.keep={keep} must be >= 1")
    self.save_every = save_every
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "extra"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def maybe_save(self, step: int, state: Any, extra: dict, *, force: bool = False) -> bool:
    """Saves when `step` is a multiple of `save_every`, or when `force`; returns whether it did."""
    if not force and step % self.save_every:
      return False
    if step in self._manager.all_steps():
      return False
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     extra=ocp.args.JsonSave(extra)), force=True)
    self._manager.wait_until_finished()
    return True

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores `step` (default: latest) into the structure/shardings of `abstract_state`.

    Raises:
      FileNotFoundError: no checkpoint.
      ValueError: a param whose stored shape differs from `abstract_state`'s (a checkpoint
        from another model config), naming the param and both shapes.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    _check_stored_shapes(self.directory, step, abstract)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["extra"]), step

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _check_stored_shapes(directory: str, step: int, abstract: Any) -> None:
  """Compares the shapes in step `step`'s `state` metadata with `abstract`'s before restoring
  (a fresh manager cannot read item metadata before its first restore, so the handler reads it)."""
  step_dir = ocp.step.standard_name_format().find_step(epath.Path(directory), step).path
  stored = ocp.StandardCheckpointHandler().metadata(step_dir / "state")
  param_shapes.check_same_shapes(f"checkpoint {directory} step {step}",
                                 param_shapes.shapes_by_name(getattr(stored, "tree", stored)),
                                 param_shapes.shapes_by_name(abstract), same_names=False)


class PreemptionGuard:
  """Sets `requested` on SIGTERM (and SIGINT if asked) instead of dying mid-step."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
    self.requested = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    print(f"received signal {signum}: will checkpoint and exit after this step", flush=True)
    self.requested = True

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
