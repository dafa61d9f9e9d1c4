"""Interruptions of a training run: SIGTERM (preemption) or Ctrl-C in the middle of a step, a
second Ctrl-C, and updates whose loss or gradient is not finite."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from entropix_rl import interventions, tasks
from entropix_rl.models import init_params
from entropix_rl.train import loop
from entropix_rl.train.checkpoint import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from entropix_rl.train.config_dict import apply_overrides, typed
from entropix_rl.train.state import create_train_state
from entropix_rl.train.update import jit_rl_update
from tests.test_train import read_metrics, small_config
from tests.test_update import MODEL, _batch, update_spec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 6
OVERRIDES = {
    "loss.name": "kl_cov",
    "rl.steps": STEPS,
    "rl.ppo_epochs": 2,
    "checkpoint.save_every": 2,
    "eval.every": 3,
}

# The train binary's own main(), on the small config, with `{signals}` sent to the process from
# inside step 3's rollout (after steps 1 and 2 are done): a signal in the middle of a step.
_INTERRUPTED_CHILD = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from absl import app
from experiments import train
from entropix_rl.train import loop
collect = loop.RLRun.collect
def collect_then_signal(self, key):
  if int(self.state.step) == 2:
    self.checkpointer.wait()  # step 2's save is finished (so a second Ctrl-C leaves it)
    for sig in {signals}:
      os.kill(os.getpid(), sig)
  return collect(self, key)
loop.RLRun.collect = collect_then_signal
sys.argv = ["train.py", "--config=tests/faults/small_config.py", "--workdir={workdir}"]
app.run(train.main)
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The metrics of the run the interrupted ones must reproduce."""
  full_dir = str(tmp_path_factory.mktemp("full"))
  loop.run(typed(small_config(**OVERRIDES)), full_dir, log=False)
  return read_metrics(full_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signals,code,saved,said",
    [
        # SIGTERM (preemption) and one Ctrl-C: the step being run is saved (off the
        # checkpoint.save_every=2 cadence), with their exit codes.
        (
            (signal.SIGTERM,),
            PREEMPTED_EXIT_CODE,
            [2, 3],
            "preempted: checkpoint saved at RL step 3",
        ),
        ((signal.SIGINT,), INTERRUPTED_EXIT_CODE, [2, 3], "interrupted (Ctrl-C): checkpoint saved"),
        # A second Ctrl-C exits at once: the last finished checkpoint (step 2) is what is left.
        ((signal.SIGINT, signal.SIGINT), INTERRUPTED_EXIT_CODE, [2], ""),
    ],
)
def test_a_signal_mid_step_stops_with_its_code_and_the_run_resumes_exactly(
    signals, code, saved, said, uninterrupted, tmp_path
):
  cut_dir = str(tmp_path / "cut")
  child = _INTERRUPTED_CHILD.format(repo=REPO, workdir=cut_dir, signals=tuple(map(int, signals)))
  proc = subprocess.run(
      [sys.executable, "-c", child],
      cwd=REPO,
      capture_output=True,
      text=True,
      env={**os.environ, "SMALL_CONFIG_OVERRIDES": json.dumps(OVERRIDES)},
      timeout=600,
  )
  assert proc.returncode == code, proc.stderr[-3000:]
  assert said in proc.stdout and "Traceback" not in proc.stderr
  assert sorted(int(s) for s in os.listdir(os.path.join(cut_dir, "checkpoints"))) == saved
  assert not os.path.exists(os.path.join(cut_dir, "DONE"))

  loop.run(typed(small_config(**OVERRIDES)), cut_dir, log=False)  # the same command: it resumes
  resumed = read_metrics(cut_dir)
  assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted]
  assert [r["step"] for r in resumed] == list(range(STEPS + 1))
  for a, b in zip(uninterrupted, resumed):
    for key, value in a.items():
      if key.startswith("time/") or value is None:
        continue
      np.testing.assert_allclose(
          b[key], value, rtol=1e-5, atol=1e-6, err_msg=f"{key} step {a['step']}"
      )


def _adaptive_bonus_update():
  """A state (Adam moments, an adaptive entropy coefficient) and its jitted RL update."""
  loss_cfg = interventions.resolve_loss_config(
      apply_overrides(
          interventions.default_loss_config(),
          {"entropy_bonus.adaptive": True, "entropy_bonus.coef": 0.003},
      )
  )
  spec = update_spec(loss_cfg, num_minibatches=2)
  optimizer = optax.adam(1e-3)
  state = create_train_state(
      init_params(MODEL, jax.random.PRNGKey(0)),
      optimizer,
      jax.random.PRNGKey(1),
      interventions=interventions.init_states(loss_cfg),
  )
  return state, jit_rl_update(spec, optimizer)


def test_a_step_whose_every_update_is_non_finite_leaves_the_state_unchanged():
  state, update = _adaptive_bonus_update()
  before = jax.tree.map(np.array, state)
  _, finite = update(state, _batch())
  assert float(finite["update/skipped"]) == 0.0

  state, update = _adaptive_bonus_update()
  batch = _batch()
  batch["rewards"][3] = np.nan  # a NaN reward makes its group's advantages and the loss NaN
  new_state, metrics = update(state, batch)
  assert float(metrics["update/skipped"]) == 1.0
  assert not np.isfinite(float(metrics["loss/loss"]))
  for name in ("params", "opt_state", "interventions"):
    jax.tree.map(np.testing.assert_array_equal, getattr(new_state, name), getattr(before, name))
  assert int(new_state.step) == int(before.step) + 1


def test_only_the_non_finite_mini_batches_are_skipped():
  # One row per mini-batch: the NaN reward of row 3 makes its group's 4 advantages NaN, so
  # exactly 4 of the 16 optimizer updates are non-finite; the other 12 are applied.
  loss_cfg = interventions.resolve_loss_config(interventions.default_loss_config())
  spec = update_spec(loss_cfg, num_minibatches=16)
  optimizer = optax.adam(1e-3)
  state = create_train_state(
      init_params(MODEL, jax.random.PRNGKey(0)), optimizer, jax.random.PRNGKey(1)
  )
  before = jax.tree.map(np.array, state.params)
  batch = _batch()
  batch["rewards"][3] = np.nan
  new_state, metrics = jit_rl_update(spec, optimizer)(state, batch)
  assert float(metrics["update/skipped"]) == 1.0
  assert float(metrics["update/skipped_fraction"]) == 4 / 16
  params = jax.tree.leaves(new_state.params)
  assert all(np.isfinite(p).all() for p in params)
  assert any(not np.array_equal(p, b) for p, b in zip(params, jax.tree.leaves(before)))
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(new_state.opt_state))


def test_consecutive_non_finite_updates_stop_the_run_with_a_clear_message(tmp_path, monkeypatch):
  task_cls = type(tasks.get_task("decomposition", min_n=100, max_n=999))
  monkeypatch.setattr(task_cls, "verify", lambda self, example, completion: float("nan"))
  config = small_config(
      **{
          "rl.steps": 8,
          "rl.max_skipped_updates": 2,
          "eval.every": 0,
          "sft.steps": 0,
          "checkpoint.save_every": 1,
      }
  )
  with pytest.raises(
      loop.UpdatesNotFinite,
      match=r"RL steps 1\.\.2: 2 steps in a row had a non-finite loss.*"
      r"rl.max_skipped_updates=2.*last checkpoint is step 1",
  ):
    loop.run(typed(config), str(tmp_path / "run"), log=False)
  records = read_metrics(str(tmp_path / "run"))
  assert [r["update/skipped"] for r in records] == [1.0, 1.0]
  assert not os.path.exists(tmp_path / "run" / "DONE")
