"""Run files on object storage: every writer and reader goes through etils.epath, so a gs://
workdir works without a mount. gs:// is simulated by redirecting epath's file operations on
`gs://bucket/...` to a local directory (`epath.testing.mock_epath`)."""

import functools
import os

from etils import epath
from etils.epath import testing as epath_testing
import jax
import numpy as np
import pytest

from entropix_rl import paths, plots, run_logs
from entropix_rl.models import hf, init_params, tiny_config
from entropix_rl.train.metrics import MetricWriter

BUCKET = "gs://bucket"


def _local(root, path):
  return os.fspath(path).replace(BUCKET, str(root))


@pytest.fixture
def gcs(tmp_path):
  """Redirects epath's operations on gs://bucket/... to tmp_path/...; yields tmp_path."""
  one = lambda fn, path, *args, **kwargs: fn(_local(tmp_path, path), *args, **kwargs)
  two = lambda fn, path, dst, *args, **kwargs: fn(
      _local(tmp_path, path), _local(tmp_path, dst), *args, **kwargs
  )
  names = (
      "open",
      "exists",
      "isdir",
      "listdir",
      "makedirs",
      "mkdir",
      "remove",
      "rmtree",
      "stat",
      "glob",
  )
  with epath_testing.mock_epath(**{n: one for n in names}, rename=two, replace=two, copy=two):
    yield tmp_path


def test_remote_paths_keep_their_scheme_and_local_ones_become_absolute(tmp_path, monkeypatch):
  assert os.fspath(paths.as_path("gs://bucket/runs/x")) == "gs://bucket/runs/x"
  assert paths.is_remote("gs://b/x") and paths.is_remote(epath.Path("s3://b/x"))
  monkeypatch.chdir(tmp_path)
  assert os.fspath(paths.as_path("runs/x")) == str(tmp_path / "runs" / "x")
  assert not paths.is_remote("runs/x")


def test_metrics_plots_and_run_logs_on_a_gs_workdir(gcs):
  workdir = f"{BUCKET}/run"
  writer = MetricWriter(workdir, tensorboard=False)
  for step in range(4):
    writer.write(step, {"entropy/paper": 1.0 / (step + 1), "reward/mean": step / 4})
  writer.truncate_after(2)
  writer.write(3, {"entropy/paper": 0.2, "reward/mean": 0.9})
  assert (gcs / "run" / "metrics.jsonl").read_text().count("\n") == 4
  run = run_logs.load_run(workdir)
  np.testing.assert_allclose(run.series("entropy/paper")[1], [1.0, 0.5, 1 / 3, 0.2])

  fig, _ = plots.new_figure(4.0, 3.0)
  plots.save_figure(fig, f"{workdir}/plots/curve.png")
  assert (gcs / "run" / "plots" / "curve.png").read_bytes()[:4] == b"\x89PNG"
  plots.plot_runs({"run": workdir}, f"{workdir}/comparison.png")
  assert (gcs / "run" / "comparison.png").stat().st_size > 1000


def test_hf_checkpoint_round_trip_on_gs(gcs):
  config = tiny_config(
      vocab_size=32,
      hidden_size=16,
      num_heads=2,
      num_kv_heads=1,
      head_dim=8,
      intermediate_size=32,
      max_position_embeddings=32,
  )
  params = init_params(config, jax.random.PRNGKey(0))
  hf.save(f"{BUCKET}/run/sft", config, params)
  assert sorted(os.listdir(gcs / "run" / "sft")) == ["config.json", "model.safetensors"]
  loaded_config, loaded = hf.load(f"{BUCKET}/run/sft", expected=config)
  assert loaded_config.hidden_size == config.hidden_size
  jax.tree.map(functools.partial(np.testing.assert_array_equal), loaded, params)
