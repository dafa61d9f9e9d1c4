r"""Every intervention side by side: the table and plots of docs/results.md from a zoo sweep.

  python experiments/compare_zoo.py --workdirs=/tmp/zoo --out=/tmp/zoo/compare

Runs are grouped by method (`run_info.json`), seeds pooled. Per method, mean ± std over seeds:

* final entropy: the paper's entropy (`entropy/paper`) averaged over the last 10 RL steps;
* sampled accuracy and pass@k (k = 1 .. 64) at the final evaluation;
* distinct correct answers per group, averaged over the last 10 RL steps;
* the law R = −a·exp(H) + b fitted per run on (training entropy, held-out sampled accuracy)
  at every evaluation step: a, b and R².

Writes `zoo.md` (the table), `zoo.json` (every number, per run and per method),
`zoo_curves.png` (entropy and accuracy against step, one line per method, mean over seeds) and
`zoo_final.png` (final accuracy against final entropy per run, with the law fitted jointly to
every run's points drawn). Takes a few seconds.
"""

from __future__ import annotations

import json
import math
import os

from absl import app, flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from entropix_rl import law, plots, run_logs

_WORKDIRS = flags.DEFINE_string("workdirs", None, "Sweep root(s) or run dirs (globs, commas).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_LAST_STEPS = flags.DEFINE_integer("last_steps", 10, "Steps averaged for entropy and diversity.")
flags.mark_flags_as_required(["workdirs", "out"])

ENTROPY, ACCURACY, DISTINCT = (
    "entropy/paper",
    "eval/sampled_accuracy",
    ("accuracy/distinct_correct_per_group"),
)
PASS_K = (1, 2, 4, 8, 16, 32, 64)


def run_summary(run: run_logs.Run, last_steps: int) -> dict[str, float]:
  """The figures of one run (module docstring); NaN where a run does not log them."""

  def last(key: str, n: int = 1) -> float:
    if key not in run.columns:
      return math.nan
    _, values = run.series(key)
    return float(values[-n:].mean()) if values.size else math.nan

  out = {
      "entropy": last(ENTROPY, last_steps),
      "accuracy": last(ACCURACY),
      "distinct": last(DISTINCT, last_steps),
  }
  out.update({f"pass@{k}": last(f"eval/pass@{k}") for k in PASS_K})
  entropy = reward = np.zeros(0)
  try:  # a run still in progress may have no training step yet
    _, (entropy, reward) = run.aligned(ENTROPY, ACCURACY)
    fit = law.fit(entropy, reward)
    out.update(a=fit.a, b=fit.b, r2=fit.r2)
  except ValueError:
    out.update(a=math.nan, b=math.nan, r2=math.nan)
  out["points"] = {"entropy": entropy.tolist(), "accuracy": reward.tolist()}
  return out


def _mean_std(values: list[float]) -> tuple[float, float]:
  arr = np.asarray([v for v in values if np.isfinite(v)], np.float64)
  if not arr.size:
    return math.nan, math.nan
  return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def by_method(runs: dict[str, run_logs.Run], last_steps: int) -> dict[str, dict]:
  """method -> {"runs": {label: summary}, "<figure>": (mean, std) over seeds}."""
  methods: dict[str, dict] = {}
  for label, run in runs.items():
    methods.setdefault(run.method, {"runs": {}})["runs"][label] = run_summary(run, last_steps)
  keys = ["entropy", "accuracy", "distinct", "a", "b", "r2"] + [f"pass@{k}" for k in PASS_K]
  for entry in methods.values():
    for key in keys:
      entry[key] = _mean_std([s[key] for s in entry["runs"].values()])
  return methods


def _cell(value: tuple[float, float], digits: int = 3) -> str:
  mean, std = value
  return "–" if not np.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(methods: dict[str, dict]) -> str:
  header = (
      "| method | seeds | final entropy | sampled accuracy | pass@1 | pass@8 | pass@64 | "
      "distinct correct / group | a | b | R² |"
  )
  lines = [header, "|---" * (header.count("|") - 1) + "|"]
  for name, m in sorted(methods.items(), key=lambda kv: -kv[1]["entropy"][0]):
    lines.append(
        f"| {name} | {len(m['runs'])} | {_cell(m['entropy'])} | {_cell(m['accuracy'])} | "
        f"{_cell(m['pass@1'])} | {_cell(m['pass@8'])} | {_cell(m['pass@64'])} | "
        f"{_cell(m['distinct'], 2)} | {_cell(m['a'], 2)} | {_cell(m['b'], 2)} | "
        f"{_cell(m['r2'], 2)} |"
    )
  return "\n".join(lines)


def _save(fig: Figure, path: str) -> None:
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_curves(runs: dict[str, run_logs.Run], path: str) -> None:
  """Entropy and sampled accuracy against step, mean over each method's seeds."""
  fig = Figure(figsize=(15, 5.5))
  axes = fig.subplots(1, 2)
  methods: dict[str, list[run_logs.Run]] = {}
  for run in runs.values():
    methods.setdefault(run.method, []).append(run)
  for (name, group), style in zip(sorted(methods.items()), plots.styles(len(methods))):
    for ax, key in zip(axes, (ENTROPY, ACCURACY)):
      series = [r.series(key) for r in group if key in r.columns]
      if not series:
        continue
      steps = series[0][0]
      values = np.mean([v for s, v in series if s.shape == steps.shape], axis=0)
      ax.plot(steps, values, label=name, markevery=max(1, len(steps) // 8), markersize=4, **style)
  axes[0].set(title="entropy (paper's definition)", xlabel="RL step", yscale="log")
  axes[1].set(title="held-out sampled accuracy", xlabel="RL step")
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
  _save(fig, path)


def plot_final(methods: dict[str, dict], path: str) -> dict | None:
  """Final accuracy against final entropy per run, and the joint law over all runs' points
  (None, and no curve, with fewer than the 3 points a fit needs)."""
  points = {
      label: (s["points"]["entropy"], s["points"]["accuracy"])
      for m in methods.values()
      for label, s in m["runs"].items()
      if s["points"]["entropy"]
  }
  joint = law.joint_fit(points) if sum(len(e) for e, _ in points.values()) >= 3 else None
  fig = Figure(figsize=(8, 6))
  ax = fig.subplots()
  for (name, m), style in zip(sorted(methods.items()), plots.styles(len(methods))):
    xs = [s["entropy"] for s in m["runs"].values()]
    ys = [s["accuracy"] for s in m["runs"].values()]
    ax.scatter(xs, ys, label=name, s=28, **style)
  if joint is not None:
    grid = np.linspace(0.0, max(max(e) for e, _ in points.values()), 200)
    ax.plot(
        grid,
        joint.fit.predict(grid),
        "k-",
        lw=1.2,
        label=f"joint law: a={joint.fit.a:.2f}, b={joint.fit.b:.2f}, R²={joint.fit.r2:.2f}",
    )
  ax.set(
      xlabel="final entropy (nats)",
      ylabel="final sampled accuracy",
      title="where each method ends (one point per seed)",
  )
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
  _save(fig, path)
  return None if joint is None else joint.to_dict()


def main(argv):
  del argv
  paths = run_logs.find_runs(_WORKDIRS.value)
  runs = {label: run_logs.load_run(path) for label, path in zip(run_logs.labels(paths), paths)}
  if not runs:
    raise SystemExit(f"--workdirs={_WORKDIRS.value}: no runs found")
  os.makedirs(_OUT.value, exist_ok=True)
  methods = by_method(runs, _LAST_STEPS.value)
  table = markdown(methods)
  joint = plot_final(methods, os.path.join(_OUT.value, "zoo_final.png"))
  plot_curves(runs, os.path.join(_OUT.value, "zoo_curves.png"))
  with open(os.path.join(_OUT.value, "zoo.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(_OUT.value, "zoo.json"), "w") as f:
    json.dump({"methods": methods, "joint_law": joint}, f, indent=1, default=float)
  print(table)
  if joint is None:
    print("\njoint law: not fitted (fewer than 3 evaluation points over all runs)")
  else:
    print(f"\njoint law over every run: {joint}")


if __name__ == "__main__":
  app.run(main)
