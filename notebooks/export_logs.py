r"""Copies the metrics the notebooks read from a sweep's run directories into notebooks/data/.

The three sweeps of configs/law.py (docs/results.md gives their run times), exported one
directory each:

  python launch/sweep.py --config=configs/law.py --workdir=/tmp/law --mode=local --jobs=2
  python launch/sweep.py --config=configs/law.py --sweep=get_size_sweep \
      --workdir=/tmp/law_sizes --mode=local --jobs=2
  python launch/sweep.py --config=configs/law.py --sweep=get_kl_cov_sweep \
      --workdir=/tmp/law_kl_cov --mode=local --jobs=2
  python notebooks/export_logs.py --sweep=/tmp/law --out=notebooks/data/law
  python notebooks/export_logs.py --sweep=/tmp/law_sizes --out=notebooks/data/size_law
  python notebooks/export_logs.py --sweep=/tmp/law_kl_cov --out=notebooks/data/kl_cov

Each run keeps `metrics.jsonl` (only the keys in `KEYS`, 4 significant digits) and a trimmed
`run_info.json`.
"""

from __future__ import annotations

import argparse
import json
import os

from entropix_rl import run_logs

KEYS = ("entropy/paper", "entropy/token_mean", "accuracy/sampled",
        "accuracy/distinct_correct_per_group", "reward/mean", "eval/sampled_accuracy",
        "eval/greedy_accuracy", "eval/pass@8", "eval/entropy_paper", "cov/mean",
        "cov/frac_positive", "cov/response_mean", "dynamics/predicted_entropy_change",
        "dynamics/measured_entropy_change", "loss/n_selected_total", "loss/clip_frac",
        "loss/approx_kl", "loss/off_policy_abs_log_ratio", "loss/selected_abs_log_ratio",
        "optimizer/learning_rate")


def export(run_dir: str, out_dir: str) -> int:
  """Writes the trimmed copy of one run; returns the number of steps written."""
  run = run_logs.load_run(run_dir)
  os.makedirs(out_dir, exist_ok=True)
  keys = [k for k in KEYS if k in run.columns] + [k for k in run.keys() if k.startswith("cov/top")]
  with open(os.path.join(out_dir, "metrics.jsonl"), "w") as f:
    for i, step in enumerate(run.steps):
      record = {k: float(f"{run.columns[k][i]:.4g}") for k in keys
                if run.columns[k][i] == run.columns[k][i]}
      if record:
        f.write(json.dumps({"step": int(step), **record}) + "\n")
  info = {k: run.info[k] for k in ("method", "non_embedding_params", "params") if k in run.info}
  config = run.info.get("config", {})
  info["seed"] = config.get("seed")
  info["loss"] = config.get("loss", {}).get("name")
  info["learning_rate"] = config.get("optimizer", {}).get("learning_rate")
  with open(os.path.join(out_dir, "run_info.json"), "w") as f:
    json.dump(info, f, indent=2)
  return len(run.steps)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", required=True, help="directory holding one subdirectory per run")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data"))
  args = parser.parse_args()
  runs = run_logs.find_runs(args.sweep)
  for run_dir in runs:
    steps = export(run_dir, os.path.join(args.out, os.path.basename(os.path.normpath(run_dir))))
    print(f"{run_dir}: {steps} steps")


if __name__ == "__main__":
  main()
