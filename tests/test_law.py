"""The entropy–performance law fits (`law`), run-log reading (`run_logs`) and `fit_law.py`."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from entropix_rl import law, run_logs
from entropix_rl.train.metrics import MetricWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTROPY_KEY, REWARD_KEY = "entropy/paper", "eval/sampled_accuracy"


def _synthetic(
    a: float = 0.3, b: float = 0.9, n: int = 200, noise: float = 0.01, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  h = rng.uniform(0.05, 1.5, size=n)
  return h, -a * np.exp(h) + b + noise * rng.standard_normal(n)


def _run_curve(
    n_steps: int = 101, a: float = 0.3, b: float = 0.9, noise: float = 0.005, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A run whose entropy decays with the step and whose reward follows the law."""
  rng = np.random.default_rng(seed)
  steps = np.arange(n_steps, dtype=np.float64)
  h = 0.05 + 1.45 * np.exp(-steps / 20.0)
  return steps, h, -a * np.exp(h) + b + noise * rng.standard_normal(n_steps)


# ---------------------------------------------------------------------------------------------
# law.fit


def test_fit_recovers_known_coefficients():
  a, b = 0.3, 0.9
  h, r = _synthetic(a, b)
  result = law.fit(h, r)
  assert result.n == 200
  assert abs(result.a - a) < 3 * result.a_stderr and abs(result.a - a) < 0.02
  assert abs(result.b - b) < 3 * result.b_stderr and abs(result.b - b) < 0.02
  assert 0 < result.a_stderr < 0.01 and 0 < result.b_stderr < 0.01
  assert result.r2 > 0.9
  assert result.rmse == pytest.approx(0.01, rel=0.2)
  assert result.ceiling == pytest.approx(result.b - result.a)
  assert abs(result.ceiling - (b - a)) < 3 * result.ceiling_stderr + 1e-12
  grid = np.array([[0.0, 0.5], [1.0, 2.0]])
  np.testing.assert_allclose(result.predict(grid), -result.a * np.exp(grid) + result.b)
  assert result.predict(grid).shape == (2, 2)


def test_fit_matches_numpy_lstsq_and_its_covariance():
  h, r = _synthetic(0.5, 1.2, n=50, noise=0.05, seed=3)
  x = np.stack([-np.exp(h), np.ones_like(h)], axis=1)
  coef, rss, *_ = np.linalg.lstsq(x, r, rcond=None)
  cov = rss[0] / (h.size - 2) * np.linalg.inv(x.T @ x)
  result = law.fit(h, r)
  np.testing.assert_allclose([result.a, result.b], coef, rtol=1e-9)
  np.testing.assert_allclose([result.a_stderr, result.b_stderr], np.sqrt(np.diag(cov)), rtol=1e-7)
  assert result.ab_cov == pytest.approx(cov[0, 1], rel=1e-7)
  assert result.ceiling_stderr == pytest.approx(
      math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), rel=1e-7
  )


def test_fit_exact_data_and_to_dict():
  h = np.array([0.1, 0.4, 0.8, 1.2])
  result = law.fit(h, -0.25 * np.exp(h) + 0.7)
  assert result.a == pytest.approx(0.25) and result.b == pytest.approx(0.7)
  assert result.rmse == pytest.approx(0.0, abs=1e-12) and result.r2 == pytest.approx(1.0)
  d = result.to_dict()
  assert set(d) >= {
      "a",
      "b",
      "a_stderr",
      "b_stderr",
      "ab_cov",
      "r2",
      "rmse",
      "n",
      "ceiling",
      "ceiling_stderr",
  }
  assert d["ceiling"] == pytest.approx(0.45) and d["n"] == 4
  json.dumps(d, allow_nan=False)
  # Constant rewards: R² is undefined and serialized as None.
  flat = law.fit(h, np.full(4, 0.5))
  assert math.isnan(flat.r2) and flat.to_dict()["r2"] is None
  assert flat.a == pytest.approx(0.0, abs=1e-12) and flat.b == pytest.approx(0.5)


@pytest.mark.parametrize(
    "entropy, reward, match",
    [
        ([0.1, 0.2], [0.5, 0.4], "at least 3"),
        ([], [], "at least 3"),
        ([0.1, 0.2, 0.3], [0.5, 0.4], "same length"),
        ([0.1, np.nan, 0.3], [0.5, 0.4, 0.3], "non-finite"),
        ([0.1, 0.2, 0.3], [0.5, np.inf, 0.3], "non-finite"),
        ([[0.1, 0.2, 0.3]], [[0.5, 0.4, 0.3]], "one-dimensional"),
        ([0.7, 0.7, 0.7, 0.7], [0.1, 0.2, 0.3, 0.4], "no spread"),
    ],
)
def test_fit_rejects_bad_inputs(entropy, reward, match):
  with pytest.raises(ValueError, match=match):
    law.fit(entropy, reward)


# ---------------------------------------------------------------------------------------------
# Early-stage prediction, joint fit, size fit


def test_early_stage_prediction_extrapolates_a_lawful_run():
  steps, h, r = _run_curve()
  out = law.early_stage_prediction(steps, h, r, fit_fraction=0.15)
  assert out["cutoff_step"] == pytest.approx(15.0)
  assert out["n_fit"] == 16 and out["n_heldout"] == 85
  assert out["heldout_rmse"] < 0.03
  assert out["heldout_max_abs_error"] >= out["heldout_rmse"]
  assert out["final_step"] == 100.0 and out["final_reward"] == pytest.approx(r[-1])
  assert out["final_error"] == pytest.approx(out["final_predicted"] - out["final_reward"])
  assert abs(out["fit"]["a"] - 0.3) < 0.05 and abs(out["fit"]["b"] - 0.9) < 0.05
  json.dumps(out, allow_nan=False)
  # Order of the points does not matter; fit_steps overrides fit_fraction.
  perm = np.random.default_rng(1).permutation(steps.size)
  shuffled = law.early_stage_prediction(steps[perm], h[perm], r[perm], fit_fraction=0.15)
  assert shuffled["heldout_rmse"] == pytest.approx(out["heldout_rmse"])
  by_steps = law.early_stage_prediction(steps, h, r, fit_steps=36, fit_fraction=0.9)
  assert by_steps["cutoff_step"] == 36.0 and by_steps["n_fit"] == 37


def test_early_stage_prediction_flags_a_run_that_breaks_the_law():
  steps, h, r = _run_curve()
  lawful = law.early_stage_prediction(steps, h, r)
  # Performance collapses in the second half although entropy keeps decreasing.
  broken = r - np.where(steps > 50, 0.004 * (steps - 50), 0.0)
  out = law.early_stage_prediction(steps, h, broken)
  assert out["heldout_rmse"] > 0.05 > 0.03 > lawful["heldout_rmse"]
  assert out["final_error"] > 0.15


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fit_fraction": 0.0}, "fit_fraction"),
        ({"fit_fraction": 1.0}, "fit_fraction"),
        ({"fit_steps": 1}, "leaves 2 point"),
        ({"fit_steps": 100}, "holds out no points"),
    ],
)
def test_early_stage_prediction_rejects_bad_cutoffs(kwargs, match):
  steps, h, r = _run_curve()
  with pytest.raises(ValueError, match=match):
    law.early_stage_prediction(steps, h, r, **kwargs)


def test_early_stage_prediction_rejects_mismatched_steps():
  steps, h, r = _run_curve()
  with pytest.raises(ValueError, match="steps and entropy"):
    law.early_stage_prediction(steps[:-1], h, r)


def test_joint_fit_pools_runs_and_reports_per_run_residuals():
  h1, r1 = _synthetic(0.3, 0.9, n=60, noise=0.005, seed=1)
  h2, r2 = _synthetic(0.3, 0.9, n=40, noise=0.005, seed=2)
  h3, r3 = _synthetic(0.3, 0.9, n=30, noise=0.005, seed=3)
  joint = law.joint_fit({"grpo": (h1, r1), "clip_cov": (h2, r2), "offset": (h3, r3 + 0.05)})
  assert joint.fit.n == 130
  assert joint.per_run_n == {"grpo": 60, "clip_cov": 40, "offset": 30}
  # The pooled fit equals a plain fit on the concatenated points.
  pooled = law.fit(np.concatenate([h1, h2, h3]), np.concatenate([r1, r2, r3 + 0.05]))
  assert joint.fit.a == pytest.approx(pooled.a) and joint.fit.b == pytest.approx(pooled.b)
  # The shifted run sits above the shared curve, the others below it.
  assert joint.per_run_bias["offset"] > 0.03
  assert joint.per_run_bias["grpo"] < 0 and joint.per_run_bias["clip_cov"] < 0
  assert joint.per_run_rmse["offset"] > joint.per_run_rmse["grpo"]
  d = joint.to_dict()
  assert d["per_run"]["offset"]["n"] == 30 and d["fit"]["n"] == 130
  json.dumps(d, allow_nan=False)
  # Same law across runs: the pooled fit recovers it.
  same = law.joint_fit({"x": (h1, r1), "y": (h2, r2)})
  assert abs(same.fit.a - 0.3) < 0.02 and abs(same.fit.b - 0.9) < 0.02
  # Runs may contribute a single point each as long as the pool has 3.
  tiny = law.joint_fit({"p": ([0.1], [0.6]), "q": ([0.5], [0.4]), "r": ([1.0], [0.1])})
  assert tiny.per_run_n == {"p": 1, "q": 1, "r": 1}


def test_joint_fit_rejects_bad_inputs():
  with pytest.raises(ValueError, match="empty"):
    law.joint_fit({})
  with pytest.raises(ValueError, match="at least 3"):
    law.joint_fit({"p": ([0.1], [0.6]), "q": ([0.5], [0.4])})
  with pytest.raises(ValueError, match="same length"):
    law.joint_fit({"p": ([0.1, 0.2], [0.6]), "q": ([0.5], [0.4])})


def test_size_fit_recovers_log_linear_coefficients():
  n_params = np.array([5e5, 2e6, 8e6, 3.2e7, 1.28e8])
  a = 0.02 * np.log(n_params) - 0.1
  b = -0.03 * np.log(n_params) + 1.5
  result = law.size_fit(n_params, a, b)
  assert result.n == 5
  assert result.a_slope == pytest.approx(0.02) and result.a_intercept == pytest.approx(-0.1)
  assert result.b_slope == pytest.approx(-0.03) and result.b_intercept == pytest.approx(1.5)
  assert result.a_r2 == pytest.approx(1.0) and result.b_r2 == pytest.approx(1.0)
  pa, pb = result.predict([1e9])
  assert pa[0] == pytest.approx(0.02 * math.log(1e9) - 0.1)
  assert pb[0] == pytest.approx(-0.03 * math.log(1e9) + 1.5)
  # Noisy values: still close.
  rng = np.random.default_rng(0)
  noisy = law.size_fit(
      n_params, a + 0.002 * rng.standard_normal(5), b + 0.002 * rng.standard_normal(5)
  )
  assert abs(noisy.a_slope - 0.02) < 0.003 and abs(noisy.b_slope + 0.03) < 0.003
  # Constant a: R² undefined -> None in the dict.
  flat = law.size_fit([1e6, 1e7], [0.2, 0.2], [0.8, 0.9])
  assert flat.a_slope == pytest.approx(0.0) and flat.to_dict()["a_r2"] is None
  json.dumps(flat.to_dict(), allow_nan=False)
  with pytest.raises(ValueError, match="positive"):
    result.predict([0.0])


@pytest.mark.parametrize(
    "n_params, a, b, match",
    [
        ([1e6, 1e7], [0.1], [0.2, 0.3], "same length"),
        ([1e6, 0.0], [0.1, 0.2], [0.2, 0.3], "positive"),
        ([1e6, 1e6], [0.1, 0.2], [0.2, 0.3], "2 distinct"),
        ([1e6, 1e7], [0.1, np.nan], [0.2, 0.3], "non-finite"),
    ],
)
def test_size_fit_rejects_bad_inputs(n_params, a, b, match):
  with pytest.raises(ValueError, match=match):
    law.size_fit(n_params, a, b)


def test_size_holdout_interval_catches_a_value_on_the_line_and_rejects_one_off_it():
  n_params = np.array([1e5, 2e5, 4e5, 8e5])
  rng = np.random.default_rng(1)
  a = 0.05 * np.log(n_params) - 0.3 + 0.005 * rng.standard_normal(4)
  truth = 0.05 * math.log(3.2e6) - 0.3
  held = law.size_holdout(n_params, a, 3.2e6, truth, 0.01)
  assert held.predicted == pytest.approx(truth, abs=0.03)
  # The t-based interval over 2 residual dof: wider than the noise, narrower than 1.
  assert 0.005 < held.interval < 1.0 and held.within
  far = law.size_holdout(n_params, a, 3.2e6, truth + 10 * held.interval, 0.01)
  assert not far.within and far.to_dict()["within"] is False
  # Two sizes: a line with no residual, so no interval.
  two = law.size_holdout([1e5, 2e5], [0.1, 0.2], 4e5, 0.3, 0.01)
  assert two.predicted == pytest.approx(0.3) and math.isnan(two.interval) and not two.within
  assert two.to_dict()["interval"] is None
  with pytest.raises(ValueError, match="2 distinct sizes"):
    law.size_holdout([1e5, 1e5], [0.1, 0.2], 4e5, 0.3, 0.01)
  with pytest.raises(ValueError, match="held_out_params"):
    law.size_holdout([1e5, 2e5], [0.1, 0.2], 0.0, 0.3, 0.01)


def test_plots_write_pngs(tmp_path):
  steps, h, r = _run_curve(n_steps=30)
  fitted = law.fit(h, r)
  path = law.plot_fit({"run": (h, r)}, fitted, str(tmp_path / "sub" / "fit.png"), title="t")
  assert os.path.getsize(path) > 1000
  pred = law.early_stage_prediction(steps, h, r, fit_fraction=0.3)
  path = law.plot_early_stage(steps, h, r, pred, str(tmp_path / "early.png"), title="t")
  assert os.path.getsize(path) > 1000


# ---------------------------------------------------------------------------------------------
# run_logs


def _write_run(
    workdir,
    *,
    n_steps: int = 12,
    eval_every: int = 3,
    info: dict | None = None,
    tensorboard: bool = True,
) -> dict[int, dict[str, float]]:
  """Logs a run with MetricWriter; returns what was written, {step: {name: value}}."""
  writer = MetricWriter(str(workdir), tensorboard=tensorboard)
  written = {}
  for step in range(1, n_steps + 1):
    metrics = {
        ENTROPY_KEY: 1.5 * math.exp(-step / 5),
        "reward/mean": 0.05 * step,
        "text": "not a scalar",
    }
    if step % eval_every == 0:
      metrics[REWARD_KEY] = 0.9 - 0.3 * math.exp(metrics[ENTROPY_KEY])
    if step == 2:
      metrics["loss/nan"] = float("nan")
    writer.write(step, metrics)
    written[step] = {k: v for k, v in metrics.items() if k != "text"}
  writer.close()
  if info is not None:
    with open(os.path.join(workdir, run_logs.RUN_INFO_FILE), "w") as f:
      json.dump(info, f)
  return written


def _assert_matches_written(run: run_logs.Run, written, rtol: float) -> None:
  assert run.steps.tolist() == sorted(written)
  assert run.steps.dtype == np.int64
  assert run.keys() == sorted({ENTROPY_KEY, "reward/mean", REWARD_KEY, "loss/nan"})
  for key in (ENTROPY_KEY, "reward/mean", REWARD_KEY):
    steps, values = run.series(key)
    expected = [(s, v[key]) for s, v in sorted(written.items()) if key in v]
    assert steps.tolist() == [s for s, _ in expected]
    np.testing.assert_allclose(values, [v for _, v in expected], rtol=rtol)
  assert run.series("loss/nan")[0].size == 0  # NaN (null in JSONL) counts as not logged


def test_load_run_reads_jsonl(tmp_path):
  written = _write_run(
      tmp_path / "run",
      info={"method": "clip_cov", "config": {"lr": 1e-6}, "non_embedding_params": 123456},
  )
  run = run_logs.load_run(str(tmp_path / "run"))
  assert run.source.endswith(run_logs.METRICS_FILE)
  _assert_matches_written(run, written, rtol=1e-12)
  assert run.name == "run" and run.method == "clip_cov" and run.non_embedding_params == 123456
  assert run.info["config"] == {"lr": 1e-6}
  steps, (h, r) = run.aligned(ENTROPY_KEY, REWARD_KEY)
  assert steps.tolist() == [3, 6, 9, 12]
  np.testing.assert_allclose(r, 0.9 - 0.3 * np.exp(h))
  with pytest.raises(ValueError, match="'missing/key' is not in run.*entropy/paper"):
    run.series("missing/key")


def test_load_run_from_tensorboard_events_matches_jsonl(tmp_path):
  written = _write_run(tmp_path / "run")
  from_jsonl = run_logs.load_run(str(tmp_path / "run"))
  os.remove(tmp_path / "run" / run_logs.METRICS_FILE)
  assert run_logs.is_run(str(tmp_path / "run"))
  from_events = run_logs.load_run(str(tmp_path / "run"))
  assert "tfevents" in from_events.source
  assert from_events.info == {} and from_events.method == "run"
  assert from_events.non_embedding_params is None
  _assert_matches_written(from_events, written, rtol=1e-6)  # float32 in the event file
  np.testing.assert_array_equal(from_events.steps, from_jsonl.steps)
  for key in from_jsonl.keys():
    np.testing.assert_allclose(from_events.columns[key], from_jsonl.columns[key], rtol=1e-6)


def test_read_event_file_truncated_and_corrupt(tmp_path):
  written = _write_run(tmp_path / "run", tensorboard=True)
  (path,) = run_logs.event_files(str(tmp_path / "run"))
  data = open(path, "rb").read()
  full = run_logs.read_event_file(path)
  assert sorted(full) == sorted(written)
  # A record cut off at the end (killed writer) is dropped, the rest kept.
  truncated = tmp_path / "events.out.tfevents.truncated"
  truncated.write_bytes(data[:-3])
  partial = run_logs.read_event_file(str(truncated))
  assert 0 < len(partial) and max(partial) <= max(full)
  # A flipped byte inside a payload is a CRC error.
  corrupt = tmp_path / "events.out.tfevents.corrupt"
  flipped = bytearray(data)
  flipped[-10] ^= 0xFF
  corrupt.write_bytes(bytes(flipped))
  with pytest.raises(ValueError, match="corrupt TFRecord"):
    run_logs.read_event_file(str(corrupt))
  # A corrupt length header, too.
  bad_header = bytearray(data)
  bad_header[0] ^= 0xFF
  corrupt.write_bytes(bytes(bad_header))
  with pytest.raises(ValueError, match="corrupt TFRecord length"):
    run_logs.read_event_file(str(corrupt))


def test_read_jsonl_merges_steps_and_skips_a_torn_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(
      '{"step": 1, "x": 1.0, "y": 2}\n\n{"step": 1, "x": 3.0, "z": null}\n'
      '{"step": 2, "x": 4.5}\n{"step": 3, "x"'
  )
  records = run_logs.read_jsonl(str(path))
  assert sorted(records) == [1, 2]
  assert records[1]["x"] == 3.0 and records[1]["y"] == 2.0 and math.isnan(records[1]["z"])
  assert records[2] == {"x": 4.5}


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"step": 1, "x"\n{"step": 2, "x": 1.0}\n', r"metrics.jsonl:1: not valid JSON"),
        ('{"step": 1, "x": 1.0}\n{"x": 1.0}\n{"step": 3}\n', r"metrics.jsonl:2: .*integer 'step'"),
        ('{"step": "1", "x": 1.0}\n', r"metrics.jsonl:1: .*integer 'step'"),
        ('{"step": true, "x": 1.0}\n', r"metrics.jsonl:1: .*integer 'step'"),
        ("[1, 2]\n", r"metrics.jsonl:1: .*integer 'step'"),
        ('{"step": 1, "x": "high"}\n', r"metrics.jsonl:1: 'x': expected a number"),
        ('{"step": 1, "x": false}\n', r"metrics.jsonl:1: 'x': expected a number"),
    ],
)
def test_read_jsonl_bad_lines_raise_with_location(tmp_path, text, match):
  (tmp_path / "metrics.jsonl").write_text(text)
  with pytest.raises(ValueError, match=match):
    run_logs.load_run(str(tmp_path))


def test_load_run_missing_dirs_and_files(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    run_logs.load_run(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="no metrics.jsonl and no TensorBoard"):
    run_logs.load_run(str(tmp_path))


def test_find_runs_with_globs_lists_and_sweep_roots(tmp_path):
  sweep = tmp_path / "sweep"
  for name in ("grpo_seed=0", "grpo_seed=1", "clip_cov_seed=0"):
    _write_run(sweep / name, n_steps=3, tensorboard=False, info={"method": name.split("_seed")[0]})
  _write_run(sweep / "sft_logs", n_steps=2, tensorboard=False)  # a run without run_info.json
  (sweep / "notes").mkdir()
  other = tmp_path / "other"
  _write_run(other, n_steps=2, tensorboard=True)
  os.remove(other / run_logs.METRICS_FILE)  # only event files: still a run

  assert run_logs.find_runs(str(sweep / "*seed=0*")) == [
      str(sweep / "clip_cov_seed=0"),
      str(sweep / "grpo_seed=0"),
  ]
  # A sweep root stands for its subdirectories that are runs with run_info.json.
  assert run_logs.find_runs(str(sweep)) == [
      str(sweep / n) for n in ("clip_cov_seed=0", "grpo_seed=0", "grpo_seed=1")
  ]
  # Comma-separated string or list; duplicates kept once, in order given.
  got = run_logs.find_runs(f"{other}, {sweep / 'grpo_*'},{sweep / 'grpo_seed=0'}/")
  assert got == [str(other), str(sweep / "grpo_seed=0"), str(sweep / "grpo_seed=1")]
  assert run_logs.find_runs([str(sweep / "sft_logs")]) == [str(sweep / "sft_logs")]
  with pytest.raises(ValueError, match="matches no file"):
    run_logs.find_runs(str(tmp_path / "missing*"))
  with pytest.raises(ValueError, match="no runs"):
    run_logs.find_runs(str(sweep / "notes"))
  with pytest.raises(ValueError, match="empty"):
    run_logs.find_runs(" , ")


def test_labels_are_short_and_unique():
  assert run_logs.labels(["/x/a/run", "/x/b/run", "/x/c/other"]) == ["a/run", "b/run", "other"]
  assert run_logs.labels(["/x/one"]) == ["one"]


# ---------------------------------------------------------------------------------------------
# experiments/fit_law.py


def _write_synthetic_run(
    workdir,
    *,
    a: float,
    b: float,
    n_params: int,
    method: str,
    seed: int,
    reward_key: str = REWARD_KEY,
) -> None:
  """metrics.jsonl with entropy every step and the reward every 2nd step, plus run_info.json."""
  os.makedirs(workdir)
  steps, h, r = _run_curve(n_steps=81, a=a, b=b, noise=0.004, seed=seed)
  with open(os.path.join(workdir, run_logs.METRICS_FILE), "w") as f:
    for s, hh, rr in zip(steps.astype(int), h, r):
      record = {"step": int(s), ENTROPY_KEY: float(hh), "reward/mean": float(rr) - 0.1}
      if s % 2 == 0:
        record[reward_key] = float(rr)
      f.write(json.dumps(record) + "\n")
  with open(os.path.join(workdir, run_logs.RUN_INFO_FILE), "w") as f:
    json.dump({"method": method, "config": {"seed": seed}, "non_embedding_params": n_params}, f)


def _fit_law(*args: str) -> subprocess.CompletedProcess:
  env = dict(
      os.environ,
      PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
      MPLBACKEND="Agg",
      JAX_PLATFORMS="cpu",
  )
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "fit_law.py"), *args],
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO,
      timeout=120,
  )


def test_fit_law_end_to_end(tmp_path):
  sweep = tmp_path / "sweep"
  truth = {
      "grpo": (0.3, 0.9, 1_000_000),
      "clip_cov": (0.3, 0.9, 1_000_000),
      "big": (0.25, 0.95, 4_000_000),
      "bigger": (0.2, 1.0, 16_000_000),
  }
  for seed, (name, (a, b, n_params)) in enumerate(truth.items()):
    _write_synthetic_run(str(sweep / name), a=a, b=b, n_params=n_params, method=name, seed=seed)
  out = tmp_path / "out"
  proc = _fit_law(f"--workdirs={sweep}", f"--out={out}", "--fit_fraction=0.2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "fitting R = -a*exp(H) + b" in proc.stdout and "law_fit.json" in proc.stdout

  with open(out / "law_fit.json") as f:
    summary = json.load(f)
  assert summary["entropy_key"] == ENTROPY_KEY and summary["reward_key"] == REWARD_KEY
  assert summary["fit_fraction"] == 0.2
  assert set(summary["runs"]) == set(truth)
  for name, (a, b, n_params) in truth.items():
    entry = summary["runs"][name]
    assert entry["method"] == name and entry["non_embedding_params"] == n_params
    assert len(entry["points"]["step"]) == 41  # the reward is logged on even steps 0..80
    fit = entry["fit"]
    for field in ("a", "b", "ceiling", "r2"):
      assert isinstance(fit[field], float), (name, field)
    assert abs(fit["a"] - a) < 0.02 and abs(fit["b"] - b) < 0.02
    assert fit["ceiling"] == pytest.approx(fit["b"] - fit["a"])
    assert fit["r2"] > 0.9
    assert entry["early_stage"]["heldout_rmse"] < 0.03
    for prefix in ("law", "early"):
      png = out / f"{prefix}_{name}.png"
      assert png.exists() and png.stat().st_size > 0, png
  assert (out / "law_joint.png").stat().st_size > 0
  assert summary["joint"]["fit"]["n"] == 4 * 41
  assert set(summary["joint"]["per_run"]) == set(truth)
  per_method = summary["joint"]["per_method"]
  assert set(per_method) == set(truth) and all(m["runs"] == 1 for m in per_method.values())
  for name, m in per_method.items():
    assert m["bias"] == pytest.approx(summary["joint"]["per_run"][name]["bias"])
  sizes = [1_000_000, 4_000_000, 16_000_000]
  assert [s["non_embedding_params"] for s in summary["sizes"]] == sizes
  assert summary["size_fit"]["n"] == 3
  # a falls by 0.05 per factor 4 of N in the synthetic truth: a line in ln N.
  assert summary["size_fit"]["a_slope"] == pytest.approx(-0.05 / math.log(4), rel=0.2)
  held = {h["non_embedding_params"]: h for h in summary["size_holdout"]}
  assert set(held) == set(sizes)
  assert held[16_000_000]["a"]["predicted"] == pytest.approx(0.2, abs=0.02)
  assert "held out N=16000000" in proc.stdout
  for name in truth:
    assert name in proc.stdout  # the table


def test_fit_law_reward_fallback_and_errors(tmp_path):
  runs = tmp_path / "runs"
  for seed, name in enumerate(("r0", "r1")):
    _write_synthetic_run(
        str(runs / name),
        a=0.3,
        b=0.9,
        n_params=10**6,
        method="grpo",
        seed=seed,
        reward_key="eval/greedy_accuracy",
    )
  out = tmp_path / "out"
  proc = _fit_law(f"--workdirs={runs / 'r0'},{runs / 'r1'}", f"--out={out}", "--fit_steps=20")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "using eval/greedy_accuracy instead" in proc.stdout
  summary = json.loads((out / "law_fit.json").read_text())
  assert summary["reward_key"] == "eval/greedy_accuracy" and summary["fit_steps"] == 20
  assert set(summary["runs"]) == {"r0", "r1"}
  assert all(e["early_stage"]["n_fit"] == 11 for e in summary["runs"].values())
  assert "size_fit" not in summary  # one model size only
  # An explicit reward key that is missing is an error naming the available keys.
  proc = _fit_law(f"--workdirs={runs}", f"--out={out}", f"--reward_key={REWARD_KEY}")
  assert proc.returncode != 0
  assert "--reward_key=eval/sampled_accuracy is not logged" in proc.stderr
  assert "eval/greedy_accuracy" in proc.stderr
  proc = _fit_law(f"--workdirs={tmp_path / 'nothing*'}", f"--out={out}")
  assert proc.returncode != 0 and "matches no file" in proc.stderr
