"""Child process for the kill -9 tests: saves step 1 of a ~32 MB state completely, then starts
saving step 2 and kills itself with SIGKILL at the kill point named on the command line.

  python tests/faults/checkpoint_writer.py DIR KILL_POINT

Kill points: `json_start` (the side-data write has not begun), `json_half` (half of the
side-data file written), `finalize` (every item written, the temporary directory not yet
renamed), `after:F` (F x the measured duration of the step-1 save after the step-2 save began:
somewhere inside the array writes).
"""

import asyncio
import os
import signal
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity

from entropix_rl.train.checkpoint import Checkpointer


def state_for(step: int) -> dict:
  rng = np.random.default_rng(step)
  return {
      "w": rng.standard_normal((2048, 2048), np.float32),
      "b": rng.standard_normal((4096,), np.float32),
      "step": np.int32(step),
  }


def die() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> float:
  """Installs the kill point; returns the delay (s) for `after:F`, else 0."""
  if point == "json_start":

    async def save_fn(self, x, directory):
      die()

    ocp.JsonCheckpointHandler._save_fn = save_fn
  elif point == "json_half":

    async def save_fn(self, x, directory):
      text = repr(x)
      with open(directory / self._filename, "w") as f:
        f.write(text[: len(text) // 2])
        f.flush()
        os.fsync(f.fileno())
      die()

    ocp.JsonCheckpointHandler._save_fn = save_fn
  elif point == "finalize":

    async def finalize(self):
      await asyncio.sleep(0)
      die()

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
  elif not point.startswith("after:"):
    raise ValueError(f"unknown kill point {point!r}")
  return 0.0


def main(directory: str, point: str) -> None:
  ckpt = Checkpointer(directory, save_every=1, keep=5)
  t0 = time.perf_counter()
  ckpt.maybe_save(1, state_for(1), {"data_state": {"index": 1}})
  ckpt.wait()
  duration = time.perf_counter() - t0
  arm(point)
  state = state_for(2)
  t0 = time.perf_counter()
  ckpt.maybe_save(2, state, {"data_state": {"index": 2}})
  if point.startswith("after:"):
    time.sleep(max(0.0, float(point.split(":")[1]) * duration - (time.perf_counter() - t0)))
    die()
  ckpt.wait()
  time.sleep(5)  # a kill point that never fired: the parent sees a clean exit and fails the test


if __name__ == "__main__":
  main(*sys.argv[1:])
