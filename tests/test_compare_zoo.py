"""experiments/compare_zoo.py on synthetic runs whose figures are known."""

import json
import math
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_run(root, name, method, entropy, accuracy, distinct, steps=40, every=10):
  """A run whose entropy/distinct are constant per step and whose evals follow the law."""
  os.makedirs(os.path.join(root, name))
  with open(os.path.join(root, name, "run_info.json"), "w") as f:
    json.dump({"method": method}, f)
  with open(os.path.join(root, name, "metrics.jsonl"), "w") as f:
    for step in range(1, steps + 1):
      h = entropy + 0.5 * (steps - step) / steps  # falls to `entropy` at the end
      f.write(
          json.dumps(
              {"step": step, "entropy/paper": h, "accuracy/distinct_correct_per_group": distinct}
          )
          + "\n"
      )
      if step % every == 0:
        row = {
            "step": step,
            "eval/sampled_accuracy": 1.2 - 0.4 * math.exp(h) if accuracy is None else accuracy,
        }
        row.update({f"eval/pass@{k}": min(1.0, 0.1 * k) for k in (1, 2, 4, 8, 16, 32, 64)})
        f.write(json.dumps(row) + "\n")


def _compare(root: str, out: str, *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [
          sys.executable,
          os.path.join(REPO, "experiments", "compare_zoo.py"),
          f"--workdirs={root}",
          f"--out={out}",
          *flags,
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_table_and_outputs(tmp_path):
  root = str(tmp_path / "zoo")
  _write_run(root, "a_seed0", "alpha", 0.20, None, 3.0)
  _write_run(root, "a_seed1", "alpha", 0.30, None, 5.0)
  _write_run(root, "b_seed0", "beta", 0.05, 0.9, 1.0)
  _write_run(root, "c_seed0", "gamma", 0.10, 0.5, 2.0, steps=0)  # still in progress
  out = str(tmp_path / "compare")
  proc = _compare(root, out, "--last_steps=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("zoo.md", "zoo.json", "zoo_curves.png", "zoo_final.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  methods = json.load(open(os.path.join(out, "zoo.json")))["methods"]
  alpha = methods["alpha"]
  np.testing.assert_allclose(alpha["entropy"], [0.25, np.std([0.2, 0.3], ddof=1)], atol=1e-9)
  np.testing.assert_allclose(alpha["distinct"], [4.0, np.std([3.0, 5.0], ddof=1)], atol=1e-9)
  # The evals lie exactly on R = 1.2 − 0.4·exp(H), so the per-run fit recovers a and b.
  np.testing.assert_allclose(alpha["a"][0], 0.4, atol=1e-6)
  np.testing.assert_allclose(alpha["b"][0], 1.2, atol=1e-6)
  np.testing.assert_allclose(alpha["r2"][0], 1.0, atol=1e-9)
  assert methods["beta"]["accuracy"] == [0.9, 0.0]
  np.testing.assert_allclose(methods["beta"]["pass@8"][0], 0.8)
  table = open(os.path.join(out, "zoo.md")).read().splitlines()
  assert [line.split("|")[1].strip() for line in table[2:]][:2] == ["alpha", "beta"]  # by entropy


def test_one_short_run_is_compared_without_a_joint_law(tmp_path):
  """One run with two evaluations (a sweep's first setting): the table and plots are written,
  the joint law is left out (it needs 3 points) instead of ending in a traceback."""
  root = str(tmp_path / "zoo")
  _write_run(root, "a_seed0", "alpha", 0.20, None, 3.0, steps=20)
  out = str(tmp_path / "compare")
  proc = _compare(root, out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "joint law: not fitted (fewer than 3 evaluation points" in proc.stdout
  assert json.load(open(os.path.join(out, "zoo.json")))["joint_law"] is None
  assert os.path.getsize(os.path.join(out, "zoo_final.png")) > 0
