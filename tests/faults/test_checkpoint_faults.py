"""Checkpoint faults: kill -9 in the middle of a write, a failing write (full disk), async saves."""

import asyncio
import errno
import os
import subprocess
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from entropix_rl.train.checkpoint import Checkpointer, CheckpointError
from tests.faults import checkpoint_writer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Deterministic points: the step-2 save can never complete. Timed points: somewhere inside it.
KILL_POINTS = [
    ("json_start", 1),
    ("json_half", 1),
    ("finalize", 1),
    ("after:0.1", None),
    ("after:0.4", None),
    ("after:0.7", None),
]


def _restore(directory):
  ckpt = Checkpointer(directory, save_every=1, keep=5)
  try:
    template = jax.tree.map(np.zeros_like, checkpoint_writer.state_for(0))
    return ckpt.all_steps(), ckpt.restore(template)
  finally:
    ckpt.close()


@pytest.mark.parametrize("point,expected_step", KILL_POINTS)
def test_kill9_during_a_save_restores_the_last_complete_checkpoint(tmp_path, point, expected_step):
  directory = str(tmp_path / "ckpt")
  proc = subprocess.run(
      [sys.executable, "tests/faults/checkpoint_writer.py", directory, point],
      cwd=REPO,
      env={**os.environ, "PYTHONPATH": REPO},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])
  steps, (state, extra, step) = _restore(directory)
  assert step == max(steps)
  if expected_step is not None:
    assert steps == [expected_step]
  assert extra == {"data_state": {"index": step}}
  jax.tree.map(np.testing.assert_array_equal, state, checkpoint_writer.state_for(step))
  assert not [p for p in os.listdir(directory) if "tmp" in p]  # partial writes were cleaned up


def test_a_failing_write_is_reported_and_never_restored(tmp_path, monkeypatch):
  directory = str(tmp_path / "ckpt")
  ckpt = Checkpointer(directory, save_every=1, keep=5)
  ckpt.maybe_save(1, checkpoint_writer.state_for(1), {"data_state": {"index": 1}})
  ckpt.wait()

  async def disk_full(self, x, directory):
    raise OSError(errno.ENOSPC, "No space left on device", str(directory))

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", disk_full)
  with pytest.raises(CheckpointError, match=r"under .*ckpt.*No space left on device"):
    ckpt.maybe_save(2, checkpoint_writer.state_for(2), {"data_state": {"index": 2}})
    ckpt.close()
  monkeypatch.undo()
  steps, (state, extra, step) = _restore(directory)
  assert steps == [1] and step == 1 and extra == {"data_state": {"index": 1}}
  jax.tree.map(np.testing.assert_array_equal, state, checkpoint_writer.state_for(1))


def test_saves_are_asynchronous_and_follow_the_cadence(tmp_path, monkeypatch):
  release = threading.Event()
  original = ocp.JsonCheckpointHandler._save_fn

  async def held(self, x, directory):
    while not release.is_set():
      await asyncio.sleep(0.01)
    await original(self, x, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", held)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=3, keep=5)
  try:
    saved = [
        ckpt.maybe_save(step, checkpoint_writer.state_for(step), {"i": step}) for step in (1, 2, 3)
    ]
    assert saved == [False, False, True]  # the cadence comes from the manager's save policy
    # maybe_save returned while the write is held: step 3 is not on disk yet.
    assert not (tmp_path / "ckpt" / "3").exists()
  finally:
    release.set()
  ckpt.wait()
  assert (tmp_path / "ckpt" / "3").exists()
  assert ckpt.all_steps() == [3]
  assert ckpt.maybe_save(4, checkpoint_writer.state_for(4), {"i": 4}, force=True)
  ckpt.close()
  assert _restore(str(tmp_path / "ckpt"))[0] == [3, 4]
