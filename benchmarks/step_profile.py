r"""Where one RL step's time goes, at `benchmarks/rl_step.py`'s shape, and what analysis costs.

  python benchmarks/step_profile.py [--steps=7]      # about 1 minute on 2 cores (default 3)

The quickstart model and batch of `benchmarks/rl_step.py` (32 prompts x 8 samples, up to 10
new tokens, 4 optimizer updates per step, no reference model), run by the trainer's own
`RLRun`. Each step is timed in parts: `collect` (rollout, decode and scoring) and the jitted
update, once lean and once measuring the entropy change (`dynamics/*`, what
`rl.dynamics_every` schedules: the full-vocabulary entropy in the behaviour pass and two more
no-grad forwards). Both updates run on the same rollout from the same state (the state is
copied before each), so their ratio is the measurement's cost alone. Medians over `--steps`
steps after a warm-up step that compiles.

One JSON line per figure, with the CPU facts of `benchmarks/machine.py`:
`{"benchmark": "step_profile", "figure": ..., "value": ..., "unit": ...}`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import machine
from benchmarks.rl_step import bench_config  # also defines --steps (its default: 3)
from entropix_rl import sharding
from entropix_rl.models import init_params
from entropix_rl.train import loop
from entropix_rl.train.config import resolve

FLAGS = flags.FLAGS


def emit(figure: str, value: float, unit: str, **extra) -> None:
  record = dict(benchmark="step_profile", figure=figure, value=value, unit=unit, **extra)
  print(json.dumps(dict(record, **machine.cpu_facts())), flush=True)


def main(argv) -> None:
  del argv
  config = bench_config()
  exp = resolve(config)
  params = init_params(exp.model, jax.random.PRNGKey(0))
  parts = {"collect": [], "update_lean": [], "update_measured": []}
  with tempfile.TemporaryDirectory() as workdir:
    run = loop.RLRun(exp, workdir, params, sharding.make_mesh(config.mesh))
    for _ in range(FLAGS.steps + 1):
      t0 = time.perf_counter()
      batch, _, _ = run.collect(run.next_key())
      parts["collect"].append(time.perf_counter() - t0)
      start = run.state
      for measured in (False, True):
        run.state = jax.tree.map(np.array, start)  # the update donates its state
        t0 = time.perf_counter()
        jax.device_get(run.rl_updates[measured](run.state, sharding.to_global(batch, run.mesh)))
        parts["update_measured" if measured else "update_lean"].append(time.perf_counter() - t0)
    run.close()
  median = {k: statistics.median(v[1:]) for k, v in parts.items()}
  for name, seconds in median.items():
    emit(f"{name}_s", seconds, "s", steps=FLAGS.steps)
  lean_step = median["collect"] + median["update_lean"]
  emit("rollout_share_of_lean_step", median["collect"] / lean_step, "fraction")
  emit(
      "dynamics_cost",
      median["update_measured"] / median["update_lean"] - 1.0,
      "fraction of the lean update",
      step_fraction=(median["update_measured"] - median["update_lean"]) / lean_step,
  )


if __name__ == "__main__":
  app.run(main)
