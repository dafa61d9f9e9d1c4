"""The binaries' edge (`entropix_rl.train.cli`): a config key, type or value given wrong on the
command line is one line naming it; `--print_config` and `--list_presets` answer without
running; the console says what a run is, when it will end and where its outputs are."""

import os
import subprocess
import sys

from absl import logging
import pytest

from configs import clip_bounds, interventions, quickstart, qwen25_7b
from entropix_rl import console
from entropix_rl.train import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args: str, tmp_path) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "experiments/train.py", *args, f"--workdir={tmp_path}/w"],
      cwd=REPO,
      capture_output=True,
      text=True,
      env={**os.environ, "PYTHONPATH": REPO},
      timeout=300,
  )


@pytest.mark.parametrize(
    "flag,says",
    [
        (
            "--config.rl.stepz=3",
            "--config.rl.stepz: configs/quickstart.py has no key 'rl.stepz'; "
            "nearest known keys: rl.steps",
        ),
        ("--config.optimzer.learning_rate=1e-3", "nearest known keys: optimizer.learning_rate"),
        ("--config.rl.steps=abc", "--config.rl.steps=abc"),
        ("--config.checkpoint.keep=0", "error: checkpoint.keep=0; allowed: an int >= 1"),
        ("--config.loss.name=nope", "error: loss.name='nope'; allowed:"),
    ],
)
def test_a_bad_config_flag_is_one_line_naming_it(flag, says, tmp_path):
  proc = _train("--config=configs/quickstart.py", flag, tmp_path=tmp_path)
  assert proc.returncode != 0 and says in proc.stderr
  assert "Traceback" not in proc.stderr
  assert len([line for line in proc.stderr.splitlines() if says.split(":")[0] in line]) == 1
  assert not os.path.exists(tmp_path / "w")  # nothing was written


def test_print_config_prints_every_field_and_what_the_run_derives(tmp_path):
  proc = _train(
      "--config=configs/quickstart.py", "--config.rl.steps=7", "--print_config", tmp_path=tmp_path
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  for line in ("steps: 7", "hidden_size: 128", "clip_cov:", "wandb:", "coordinator_address"):
    assert line in proc.stdout, line
  assert "# resolved: qwen2 model" in proc.stdout and "vocab 15" in proc.stdout
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize(
    "config,expected",
    [
        ("configs/interventions.py", "configs/interventions.py:clip_cov"),
        ("configs/quickstart.py", "configs/quickstart.py:runlocal"),
        ("configs/qwen25_7b.py", "configs/qwen25_7b.py:kl_cov"),
        ("configs/law.py", "no presets"),
    ],
)
def test_list_presets_names_what_may_follow_the_colon(config, expected, tmp_path):
  proc = _train(f"--config={config}", "--list_presets", tmp_path=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert expected in proc.stdout


def test_presets_are_checked():
  assert cli.presets(quickstart) == ("runlocal",)
  assert set(cli.presets(qwen25_7b)) == {"grpo", "clip_higher", "clip_cov", "kl_cov"}
  assert "steer" in cli.presets(interventions) and "no_clip" in cli.presets(clip_bounds)
  with pytest.raises(ValueError, match=r"configs/quickstart.py:False: unknown preset"):
    quickstart.get_config("False")  # ":False" no longer turns the smoke run on


def test_nearest_keys_stay_in_the_section_first():
  known = cli.leaf_keys(quickstart.get_config())
  assert cli.nearest_keys("rl.stepz", known)[0] == "rl.steps"
  assert cli.nearest_keys("loss.clip_cov.ration", known)[0] == "loss.clip_cov.ratio"


def test_progress_leaves_compilation_out_of_the_eta(monkeypatch):
  clock = iter([0.0, 30.0, 31.0, 32.0, 40.0])  # start; step 1 ends after 30 s of compiling
  monkeypatch.setattr(console.time, "perf_counter", lambda: next(clock))
  lines = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
  progress = console.Progress(10, every=1, keys=("entropy/paper",), label="grpo")
  progress.update(1, {"entropy/paper": 0.5})
  progress.update(2, {"entropy/paper": 0.4})
  progress.update(3, {"entropy/paper": 0.3})
  assert "compilation included" in lines[0] and "entropy/paper=0.5" in lines[0]
  assert "1.00s/step | ETA 0m08s" in lines[1]  # 1 s per step after the first, 8 steps left
  assert "1.00s/step" in lines[2] and "elapsed 0m32s" in lines[2]
