"""End to end: a few steps of a smaller quickstart, and config validation (interruptions and
resume: tests/faults/test_interruptions.py)."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import quickstart
from entropix_rl import run_logs
from entropix_rl.train import loop
from entropix_rl.train.config import make_tokenizer, resolve
from entropix_rl.train.config_dict import apply_overrides, typed
from entropix_rl.train.rollout_metrics import SAMPLE_COLUMNS
from tests import wandb_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**overrides):
  config = quickstart.get_config("runlocal")
  config.model.hidden_size = 32
  config.model.num_layers = 2
  config.model.head_dim = 8
  config.model.intermediate_size = 64
  config.sft.batch_size = 32
  config.sft.steps = 10
  config.sft.log_every = 5
  config.logging.tensorboard = False
  config.eval.num_prompts = 8
  return apply_overrides(config, overrides)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_end_to_end_writes_metrics_samples_checkpoints_and_wandb(tmp_path):
  workdir = str(tmp_path / "run")
  wandb_dir = str(tmp_path / "wandb_files")
  tracking = {
      "rl.dynamics_every": 2,
      "logging.samples_every": 2,
      "logging.num_samples": 3,
      "logging.tensorboard": True,
      "logging.wandb.enabled": True,
      "logging.wandb.mode": "offline",
      "logging.wandb.dir": wandb_dir,
  }
  loop.run(
      typed(small_config(**{"loss.name": "clip_cov", "eval.every": 2, **tracking})),
      workdir,
      log=False,
  )
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
  step = records[-1]
  for key in (
      "entropy/paper",
      "entropy/token_mean",
      "reward/mean",
      "cov/mean",
      "loss/clip_frac",
      "loss/approx_kl",
      "loss/kl_ref",
      "time/tokens_per_s",
      "accuracy/distinct_correct_per_group",
      "eval/greedy_accuracy",
      "eval/pass@4",
      "optimizer/learning_rate",
  ):
    assert key in step and np.isfinite(step[key]), key
  dynamics = ("dynamics/predicted_entropy_change", "dynamics/measured_entropy_change")
  for record in records[1:]:  # measured at steps 1 and 3 (rl.dynamics_every=2), only there
    measured = all(np.isfinite(record.get(key, np.nan)) for key in dynamics)
    assert measured == (record["step"] % 2 == 1), record["step"]
  assert (
      0.0 < step["entropy/paper"] <= np.log(make_tokenizer(typed(small_config())).vocab_size) + 1e-5
  )
  assert os.path.exists(os.path.join(workdir, "DONE"))
  assert os.path.exists(os.path.join(workdir, "sft", "config.json"))
  info = json.load(open(os.path.join(workdir, "run_info.json")))
  assert info["method"] == "clip_cov" and info["non_embedding_params"] > 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "4"

  tables = [json.loads(line) for line in open(os.path.join(workdir, "tables", "samples.jsonl"))]
  assert [t["step"] for t in tables] == [2, 4]
  rows = tables[-1]["rows"]
  assert len(rows) == 3 and list(rows[0]) == list(SAMPLE_COLUMNS)
  assert all(r["prompt"] and r["length"] >= 1 and r["entropy"] > 0 for r in rows)
  assert {r["reward"] for r in rows} <= {0.0, 1.0} and rows[0]["group"] == 0
  events = b"".join(open(f, "rb").read() for f in run_logs.event_files(workdir))
  assert rows[0]["prompt"].encode() in events  # the table as TensorBoard text

  run_id = open(os.path.join(workdir, "wandb_run_id")).read()
  (first,) = glob.glob(os.path.join(wandb_dir, "wandb", f"offline-run-*-{run_id}", "*.wandb"))
  logged = wandb_records.history(first)
  assert sorted(logged) == [0, 1, 2, 3, 4]
  for s, record in zip(range(5), records):
    assert json.loads(
        logged[s]["reward/mean"] if s else logged[s]["eval/greedy_accuracy"]
    ) == pytest.approx(record["reward/mean"] if s else record["eval/greedy_accuracy"], rel=1e-6)
  assert json.loads(logged[4]["samples/nrows"]) == 3 and "samples/_type" in logged[2]

  loop.run(
      typed(small_config(**{"loss.name": "clip_cov", "eval.every": 2, "rl.steps": 6, **tracking})),
      workdir,
      log=False,
  )  # resumes at step 4
  assert [r["step"] for r in read_metrics(workdir)] == [0, 1, 2, 3, 4, 5, 6]
  tables = [json.loads(line) for line in open(os.path.join(workdir, "tables", "samples.jsonl"))]
  assert [t["step"] for t in tables] == [2, 4, 6]
  runs = sorted(glob.glob(os.path.join(wandb_dir, "wandb", f"offline-run-*-{run_id}*", "*.wandb")))
  assert len(runs) == 2  # the same W&B run id continues
  assert sorted(wandb_records.history(next(r for r in runs if r != first))) == [5, 6]


BAD_CONFIGS = [
    ({"loss.name": "grpo_plus"}, r"loss.name='grpo_plus'.*allowed"),
    ({"loss.clip_cov.ratio": 1.5}, r"loss.clip_cov.ratio.*\(0, 1\]"),
    ({"loss.kl_cov.ratio": 0.0}, r"loss.kl_cov.ratio.*\(0, 1\]"),
    ({"rl.group_size": 1}, r"group_size=1 with rl.advantage='grpo'"),
    ({"data.max_prompt_len": 60}, r"exceeds the model's context"),
    ({"rl.advantage": "ppo_gae"}, r"rl.advantage='ppo_gae'; allowed"),
    ({"model.init": "pretrained"}, r"model.init='pretrained'; allowed"),
    ({"optimizer.schedule": "linear"}, r"optimizer.schedule='linear'; allowed"),
    ({"rl.num_minibatches": 3}, r"rl.num_minibatches=3 must divide"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS)
def test_invalid_configs_fail_at_start_up(overrides, message):
  config = small_config()
  with config.unlocked():
    apply_overrides(config, overrides)
  with pytest.raises(ValueError, match=message):
    resolve(typed(config))


def test_train_binary_rejects_unknown_loss_before_any_work(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "experiments/train.py",
          "--config=configs/quickstart.py",
          f"--workdir={tmp_path}/w",
          "--config.loss.name=nope",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0
  assert "loss.name='nope'" in proc.stderr
  assert not os.path.exists(os.path.join(tmp_path, "w", "checkpoints"))
