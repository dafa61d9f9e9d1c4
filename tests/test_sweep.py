"""Tests of launch/sweep.py: expansion of get_sweep(), commands, run names, DONE skipping,\npreempted and interrupted runs."""

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_PY = os.path.join(REPO_ROOT, "launch", "sweep.py")

_spec = importlib.util.spec_from_file_location("launch_sweep", SWEEP_PY)
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

_CONFIG = textwrap.dedent("""
    import ml_collections


    def get_config():
      return ml_collections.ConfigDict({"seed": 0, "loss": {"name": "ppo",
                                        "clip_cov": {"ratio": 2e-4}, "kl_cov": {"ratio": 2e-4}}})


    def get_sweep():
      return [
          {"loss.name": "ppo", "seed": 0},
          {"loss.name": "clip_cov", "loss.clip_cov.ratio": 0.02, "seed": 0},
          {"loss.name": "kl_cov", "loss.kl_cov.ratio": 0.2, "seed": 1},
          {"_name": "custom", "loss.name": "ppo", "seed": 3},
      ]
""")


@pytest.fixture
def config_path(tmp_path):
  path = tmp_path / "tiny_sweep.py"
  path.write_text(_CONFIG)
  return str(path)


def test_expand_sweep_names_and_overrides(config_path):
  runs = sweep.expand_sweep(config_path)
  assert [name for name, _ in runs] == [
      "name-ppo__seed-0",
      "name-clip_cov__clip_cov.ratio-0.02__seed-0",
      "name-kl_cov__kl_cov.ratio-0.2__seed-1",
      "custom",
  ]
  assert runs[1][1] == {"loss.name": "clip_cov", "loss.clip_cov.ratio": 0.02, "seed": 0}
  assert runs[3][1] == {"loss.name": "ppo", "seed": 3}


def test_command_for_local_and_tpu():
  cmd = sweep.command_for(
      "cfg.py",
      "/w/run",
      {"loss.name": "clip_cov", "rl.remat": True},
      python="python",
      extra=["--config.rl.steps=5"],
  )
  assert cmd[0] == "python" and cmd[1].endswith(os.path.join("experiments", "train.py"))
  assert cmd[2:] == [
      "--config=cfg.py",
      "--workdir=/w/run",
      "--config.loss.name=clip_cov",
      "--config.rl.remat=true",
      "--config.rl.steps=5",
  ]
  tpu = sweep.command_for("cfg.py", "gs://b/run", {"seed": 1}, mode="tpu", tpu_name="t", zone="z")
  assert tpu[0] == "bash" and tpu[1].endswith(os.path.join("launch", "run.sh"))
  assert tpu[2:] == ["t", "z", "cfg.py", "gs://b/run", "--config.seed=1"]
  with pytest.raises(ValueError, match="tpu_name"):
    sweep.command_for("cfg.py", "w", {}, mode="tpu")


def test_duplicate_names_raise(tmp_path):
  path = tmp_path / "dup.py"
  path.write_text("def get_sweep():\n  return [{'seed': 0}, {'seed': 0}]\n")
  with pytest.raises(ValueError, match="seed-0"):
    sweep.expand_sweep(str(path))


def test_dry_run_cli_skips_done(config_path, tmp_path):
  base = tmp_path / "runs"
  (base / "name-ppo__seed-0").mkdir(parents=True)
  (base / "name-ppo__seed-0" / "DONE").touch()
  out = subprocess.run(
      [
          sys.executable,
          SWEEP_PY,
          f"--config={config_path}",
          f"--workdir={base}",
          "--dry_run",
          "--python=python",
          "--config.rl.steps=2",
      ],
      capture_output=True,
      text=True,
      check=True,
      cwd=REPO_ROOT,
  ).stdout
  lines = out.strip().splitlines()
  assert lines[0].startswith("[1/4] name-ppo__seed-0: DONE exists")
  assert lines[1] == (
      "[2/4] name-clip_cov__clip_cov.ratio-0.02__seed-0: python experiments/train.py "
      f"--config={config_path} --workdir={base}/name-clip_cov__clip_cov.ratio-0.02__seed-0 "
      "--config.loss.name=clip_cov --config.loss.clip_cov.ratio=0.02 --config.seed=0 "
      "--config.rl.steps=2"
  )
  assert lines[3].startswith("[4/4] custom: python experiments/train.py")
  assert lines[-1].startswith("4 runs: 1 already done")


def test_local_mode_runs_in_order_and_skips_done(config_path, tmp_path):
  base = tmp_path / "runs"
  (base / "custom").mkdir(parents=True)
  (base / "custom" / "DONE").touch()
  calls = []

  def runner(cmd, check):
    calls.append(cmd)
    return subprocess.CompletedProcess(cmd, 1 if "seed=1" in " ".join(cmd) else 0)

  results = sweep.run_sweep(
      config_path, str(base), python="python", runner=runner, log=lambda _: None
  )
  assert [r[1] for r in results] == ["ok", "ok", "failed (rc=1)", "done"]
  assert len(calls) == 3 and all(c[0] == "python" for c in calls)
  assert f"--workdir={base}/name-ppo__seed-0" in calls[0]


def test_unknown_flag_rejected(config_path):
  proc = subprocess.run(
      [sys.executable, SWEEP_PY, f"--config={config_path}", "--workdir=w", "--bogus=1"],
      capture_output=True,
      text=True,
      cwd=REPO_ROOT,
  )
  assert proc.returncode != 0 and "--bogus=1" in proc.stderr


def test_parallel_jobs_run_first_alone_and_log_each_run(config_path, tmp_path):
  base = tmp_path / "runs"
  events, lock = [], threading.Lock()

  def runner(cmd, check, stdout, stderr):
    name = next(a for a in cmd if a.startswith("--workdir=")).rsplit("/", 1)[1]
    with lock:
      events.append(("start", name))
    stdout.write(f"output of {name}\n")
    time.sleep(0.2)
    with lock:
      events.append(("end", name))
    return subprocess.CompletedProcess(cmd, 0)

  results = sweep.run_sweep(
      config_path, str(base), python="python", jobs=2, runner=runner, log=lambda _: None
  )
  names = [n for n, _ in results]
  assert [s for _, s in results] == ["ok"] * 4
  assert events[:2] == [("start", names[0]), ("end", names[0])]  # the first run goes alone
  rest = events[2:]
  assert rest[0][0] == rest[1][0] == "start"  # then two at once
  assert (base / f"{names[2]}.log").read_text() == f"output of {names[2]}\n"
  with pytest.raises(ValueError, match="jobs=2"):
    sweep.run_sweep(config_path, str(base), mode="tpu", jobs=2, runner=runner)


def test_parallel_jobs_stop_when_the_first_run_fails(config_path, tmp_path):
  started = []

  def runner(cmd, check, stdout, stderr):
    started.append(cmd)
    return subprocess.CompletedProcess(cmd, 1)

  results = sweep.run_sweep(
      config_path,
      str(tmp_path / "runs"),
      python="python",
      jobs=2,
      runner=runner,
      log=lambda _: None,
  )
  assert len(started) == 1
  assert results[0][1] == "failed (rc=1)"
  assert [s for _, s in results[1:]] == ["not run (first run failed)"] * 3


def test_a_preempted_run_is_reported_and_resumed(config_path, tmp_path):
  codes = {"name-ppo__seed-0": [75, 75, 0], "custom": [75, 75, 75, 75]}
  calls = []

  def runner(cmd, check):
    name = next(a for a in cmd if a.startswith("--workdir=")).rsplit("/", 1)[1]
    calls.append(name)
    return subprocess.CompletedProcess(cmd, codes.get(name, [0]).pop(0))

  logged = []
  results = dict(
      sweep.run_sweep(
          config_path,
          str(tmp_path / "runs"),
          python="python",
          runner=runner,
          max_resumes=3,
          log=logged.append,
      )
  )
  assert results["name-ppo__seed-0"] == "ok" and calls.count("name-ppo__seed-0") == 3
  assert results["custom"] == "preempted (rc=75)" and calls.count("custom") == 4
  assert any("preempted (checkpoint saved); resuming, attempt 2/3" in line for line in logged)


def test_a_run_stopped_by_ctrl_c_starts_no_further_run(config_path, tmp_path):
  """A run that exits with 130 saved its step after Ctrl-C: it is not resumed, no later run
  starts (before this, the sweep went on launching the others)."""
  calls = []

  def runner(cmd, check):
    calls.append(cmd)
    return subprocess.CompletedProcess(cmd, 130 if len(calls) == 2 else 0)

  results = sweep.run_sweep(
      config_path, str(tmp_path / "runs"), python="python", runner=runner, log=lambda _: None
  )
  assert [s for _, s in results] == ["ok", "interrupted (rc=130)"] + ["not run (interrupted)"] * 2
  assert len(calls) == 2


def test_ctrl_c_reaches_the_runs_and_the_sweep_exits_130(config_path, tmp_path):
  """Ctrl-C in a terminal signals the whole foreground process group: the sweep waits for its
  running run to save and exit, starts no other and exits with 130."""
  fake_python = tmp_path / "python"  # stands for the trainer: exits 130 on SIGINT
  fake_python.write_text(  # (its background sleep ignores SIGINT, so the trap ends it)
      f"#!/usr/bin/env bash\necho started >> {tmp_path}/runs.log\n"
      "trap 'echo saved >> " + f"{tmp_path}/runs.log; kill $!; exit 130' INT\n"
      "sleep 60 & wait\n"
  )
  fake_python.chmod(0o755)
  proc = subprocess.Popen(
      [sys.executable, SWEEP_PY, f"--config={config_path}", f"--workdir={tmp_path}/w"]
      + [f"--python={fake_python}"],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      start_new_session=True,
  )
  deadline = time.time() + 60
  while not (tmp_path / "runs.log").exists() and time.time() < deadline:
    time.sleep(0.1)
  os.killpg(proc.pid, signal.SIGINT)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 130, out
  assert (tmp_path / "runs.log").read_text().split() == ["started", "saved"]
  assert "1 interrupted, 3 not run" in out and "Traceback" not in out


def test_exit_codes_match_the_trainer():
  from entropix_rl.train.checkpoint import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE

  assert sweep.PREEMPTED_EXIT_CODE == PREEMPTED_EXIT_CODE
  assert sweep.INTERRUPTED_EXIT_CODE == INTERRUPTED_EXIT_CODE


@pytest.mark.parametrize(
    "codes,expected_rc,expected_calls", [("75 75 0", 0, 3), ("75 75 75", 75, 3), ("3", 3, 1)]
)
def test_run_sh_resumes_a_preempted_run(tmp_path, codes, expected_rc, expected_calls):
  fake_bin = tmp_path / "bin"
  fake_bin.mkdir()
  (tmp_path / "codes").write_text(codes.replace(" ", "\n") + "\n")
  gcloud = fake_bin / "gcloud"  # pops the next exit code, logs the call
  gcloud.write_text(
      f"#!/usr/bin/env bash\necho call >> {tmp_path}/calls\n"
      f"rc=$(head -n1 {tmp_path}/codes); sed -i 1d {tmp_path}/codes; exit $rc\n"
  )
  gcloud.chmod(0o755)
  proc = subprocess.run(
      [
          "bash",
          os.path.join(REPO_ROOT, "launch", "run.sh"),
          "tpu",
          "zone",
          "configs/quickstart.py",
          "gs://b/run",
      ],
      capture_output=True,
      text=True,
      env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "MAX_RESUMES": "2"},
      timeout=60,
  )
  assert proc.returncode == expected_rc, proc.stdout + proc.stderr
  assert (tmp_path / "calls").read_text().count("call") == expected_calls
  if expected_rc == 75:
    assert "giving up (exit 75)" in proc.stdout
