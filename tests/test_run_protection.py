"""Runs that protect themselves: a re-run into a workdir may not change what the run computes
(nor relabel it), a finished run stays untouched, a warm start is reused only with the settings
that made it, shared folders follow the workdir, and bad input is refused before any work."""

import hashlib
import json
import os
import shutil

import pytest

from configs import law
from entropix_rl import paths
from entropix_rl.train import loop, run_record
from entropix_rl.train.config import ConfigError
from entropix_rl.train.config_dict import typed
from tests.test_train import read_metrics, small_config

FAST = {"sft.steps": 0, "rl.steps": 2, "eval.every": 0, "checkpoint.save_every": 1}


def _files(workdir: str) -> dict[str, str]:
  """Every file under `workdir` with a hash of its bytes."""
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> str:
  """A finished GRPO run of 2 steps."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  loop.run(typed(small_config(**FAST)), workdir, log=False)
  return workdir


def _copy(finished: str, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  return workdir


@pytest.mark.slow
def test_a_rerun_of_another_method_is_refused_naming_the_fields_and_changes_no_file(
    finished, tmp_path
):
  workdir = _copy(finished, tmp_path)
  before = _files(workdir)
  config = typed(small_config(**{**FAST, "rl.steps": 4, "loss.name": "clip_cov"}))
  with pytest.raises(run_record.ConfigChanged) as err:
    loop.run(config, workdir, log=False)
  assert "loss.name: 'ppo' -> 'clip_cov'" in str(err.value)
  assert "--allow_config_change" in str(err.value) and "rl.steps" not in str(err.value)
  assert _files(workdir) == before  # run_info.json still names GRPO
  assert json.load(open(os.path.join(workdir, "run_info.json")))["method"] == "grpo"


@pytest.mark.slow
def test_a_rerun_with_nothing_left_to_do_changes_no_file(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  before = _files(workdir)
  assert loop.run(typed(small_config(**{**FAST, "rl.steps": 1})), workdir, log=False) == []
  assert loop.run(typed(small_config(**FAST)), workdir, log=False) == []
  assert _files(workdir) == before


@pytest.mark.slow
def test_a_longer_run_continues_and_records_the_change(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  history = loop.run(typed(small_config(**{**FAST, "rl.steps": 3})), workdir, log=False)
  assert len(history) == 1  # step 3 alone
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3]
  info = json.load(open(os.path.join(workdir, "run_info.json")))
  (change,) = info["config_changes"]
  assert change["at_step"] == 2 and change["changed"] == {"rl.steps": {"old": 2, "new": 3}}
  assert info["config"]["rl"]["steps"] == 3 and info["method"] == "grpo"


@pytest.mark.slow
def test_allow_config_change_continues_the_run_and_records_what_changed(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  config = typed(small_config(**{**FAST, "rl.steps": 3, "loss.clip_eps_high": 0.28}))
  loop.run(config, workdir, log=False, allow_config_change=True)
  info = json.load(open(os.path.join(workdir, "run_info.json")))
  assert info["method"] == "clip_higher"
  assert info["config_changes"][-1]["changed"]["loss.clip_eps_high"] == {"old": 0.2, "new": 0.28}


def test_only_length_logging_cadence_and_placement_may_change_freely():
  for key in ("rl.steps", "logging.console_every", "eval.every", "checkpoint.keep", "mesh.data"):
    assert run_record.resumable(key), key
  for key in ("loss.name", "rl.prompts_per_step", "optimizer.learning_rate", "seed", "sft.steps"):
    assert not run_record.resumable(key), key


@pytest.mark.slow
def test_a_warm_start_of_other_settings_is_refused_before_any_work(tmp_path):
  shared = {"sft.steps": 3, "sft.shared_dir": "../warm", "rl.steps": 1, "eval.every": 0}
  loop.run(typed(small_config(**shared)), str(tmp_path / "a"), log=False)
  assert os.path.exists(tmp_path / "warm" / "sft" / "warm_start.json")  # beside the run
  settings = json.load(open(tmp_path / "warm" / "sft" / "warm_start.json"))
  assert settings["sft.steps"] == 3 and "sft.shared_dir" not in settings
  with pytest.raises(ConfigError, match=r"sft.steps: 3 there, 5 here.*sft.shared_dir"):
    loop.run(typed(small_config(**{**shared, "sft.steps": 5})), str(tmp_path / "b"), log=False)
  assert not os.path.exists(tmp_path / "b")  # refused before anything was written
  loop.run(typed(small_config(**{**shared, "rl.steps": 2})), str(tmp_path / "c"), log=False)


def test_relative_shared_folders_follow_the_workdir():
  assert str(paths.resolve("/runs/law/grpo_seed0", "../sft_seed0")) == "/runs/law/sft_seed0"
  assert str(paths.resolve("gs://b/law/grpo", "../sft")) == "gs://b/law/sft"
  assert str(paths.resolve("/runs/x", "/abs/sft")) == "/abs/sft"
  assert str(paths.resolve("/runs/x", "")) == "/runs/x"
  for sweep in (law.get_sweep, law.get_size_lr_sweep, law.get_size_sweep, law.get_kl_cov_sweep):
    for setting in sweep():
      assert not setting["sft.shared_dir"].startswith("/"), setting
  assert not law.get_config().sft.shared_dir.startswith("/")
