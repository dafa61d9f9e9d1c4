r"""Fit the entropy–performance law R = −a·exp(H) + b to training runs (Cui et al. 2025 §2; docs/interventions.md).

  python experiments/fit_law.py --workdirs=/tmp/entropix_quickstart --out=/tmp/law
  python experiments/fit_law.py --workdirs='/tmp/sweep/*seed=0*,/tmp/other_run' \
      --fit_steps=36 --out=/tmp/law

For each run, pairs the entropy and the reward logged at the same step (by default the
rollout's `entropy/paper` and the held-out `eval/sampled_accuracy`, so one point per
evaluation step), fits the law, and repeats the paper's early-stage experiment (fit the first
`--fit_fraction` of the run, predict the rest). With several runs it also fits one law to all
of them (the paper's "algorithm-irrelevant" check: give it runs of one model) and, when the runs span at least two model
sizes (`non_embedding_params` in run_info.json), a and b against log size. Writes
`law_fit.json` (fits, errors and the points used) and PNG plots to `--out`, and prints a
table. Takes a second or two; no accelerator needed.
"""

from __future__ import annotations

import json
import math
import os
import re

from absl import app, flags

from entropix_rl import law, run_logs

_WORKDIRS = flags.DEFINE_string(
    "workdirs",
    None,
    "Run directories: a glob or a comma-separated list of paths/globs. A "
    "directory that is not a run (a sweep root) stands for its run subdirectories.",
)
_ENTROPY_KEY = flags.DEFINE_string("entropy_key", "entropy/paper", "Metric used as H (nats).")
_REWARD_KEY = flags.DEFINE_string(
    "reward_key",
    "eval/sampled_accuracy",
    "Metric used as R. If left at its default and a run "
    "lacks it, the first of eval/greedy_accuracy, accuracy/sampled, reward/mean that every run "
    "has is used instead, with a message.",
)
_FIT_FRACTION = flags.DEFINE_float(
    "fit_fraction", 0.15, "Early-stage prediction: fit on this first fraction of steps."
)
_FIT_STEPS = flags.DEFINE_integer(
    "fit_steps", None, "Early-stage prediction: fit on steps <= this instead (paper: 36)."
)
_OUT = flags.DEFINE_string("out", None, "Output directory for law_fit.json and the plots.")
flags.mark_flags_as_required(["workdirs", "out"])

REWARD_FALLBACKS = (
    "eval/sampled_accuracy",
    "eval/greedy_accuracy",
    "accuracy/sampled",
    "reward/mean",
)


def _missing(runs: dict[str, run_logs.Run], key: str) -> list[str]:
  return [label for label, run in runs.items() if key not in run.columns]


def _has(runs: dict[str, run_logs.Run], label: str) -> str:
  return f"{label} has: {', '.join(runs[label].keys()) or 'no metrics'}"


def check_key(runs: dict[str, run_logs.Run], key: str, flag: str) -> None:
  """Raises ValueError naming the runs without `key` and the keys the first of them has."""
  missing = _missing(runs, key)
  if missing:
    raise ValueError(
        f"--{flag}={key} is not logged by run(s) {', '.join(missing)}; " f"{_has(runs, missing[0])}"
    )


def choose_reward_key(runs: dict[str, run_logs.Run], requested: str, explicit: bool) -> str:
  """`requested` if every run logs it; else, unless it was set explicitly, the first fallback."""
  missing = _missing(runs, requested)
  if explicit or not missing:
    check_key(runs, requested, "reward_key")
    return requested
  fallback = next((key for key in REWARD_FALLBACKS if not _missing(runs, key)), None)
  if fallback is None:
    raise ValueError(
        f"--reward_key={requested} is not logged by run(s) {', '.join(missing)}, "
        f"and no fallback ({', '.join(REWARD_FALLBACKS[1:])}) is logged by every "
        f"run; {_has(runs, missing[0])}"
    )
  print(
      f"note: --reward_key={requested} is not logged by run(s) {', '.join(missing)}; using "
      f"{fallback} instead"
      + (
          ""
          if fallback.startswith("eval/")
          else " (the training batch's reward, not a held-out evaluation)"
      ),
      flush=True,
  )
  return fallback


def _describe(label: str, method: str) -> str:
  return label if method in (label, "") else f"{label} ({method})"


def _filename(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9._=+-]", "_", label)


def analyze_run(
    run: run_logs.Run,
    label: str,
    entropy_key: str,
    reward_key: str,
    out: str,
    *,
    fit_fraction: float,
    fit_steps: int | None,
) -> dict:
  """Per-run fit and early-stage prediction; writes `law_<label>.png`, `early_<label>.png`."""
  steps, (entropy, reward) = run.aligned(entropy_key, reward_key)
  entry = {
      "workdir": run.workdir,
      "method": run.method,
      "non_embedding_params": run.non_embedding_params,
      "points": {"step": steps.tolist(), "entropy": entropy.tolist(), "reward": reward.tolist()},
  }
  try:
    fit = law.fit(entropy, reward)
  except ValueError as e:
    entry["fit_error"] = str(e)
    return entry
  entry["fit"] = fit.to_dict()
  law.plot_fit(
      {label: (entropy, reward)},
      fit,
      os.path.join(out, f"law_{_filename(label)}.png"),
      title=_describe(label, run.method),
  )
  try:
    early = law.early_stage_prediction(
        steps, entropy, reward, fit_fraction=fit_fraction, fit_steps=fit_steps
    )
  except ValueError as e:
    entry["early_stage_error"] = str(e)
    return entry
  entry["early_stage"] = early
  law.plot_early_stage(
      steps,
      entropy,
      reward,
      early,
      os.path.join(out, f"early_{_filename(label)}.png"),
      title=f"{label}: early-stage prediction",
  )
  return entry


def _points(entry: dict) -> tuple[list[float], list[float]]:
  return entry["points"]["entropy"], entry["points"]["reward"]


def analyze(
    runs: dict[str, run_logs.Run],
    entropy_key: str,
    reward_key: str,
    out: str,
    *,
    fit_fraction: float = 0.15,
    fit_steps: int | None = None,
) -> dict:
  """Fits every run, jointly and by model size; writes `law_fit.json` and plots to `out`.

  Args:
    runs: label -> loaded run.
    entropy_key, reward_key: metric names for H and R (present in every run).
    out: output directory (created).
    fit_fraction, fit_steps: as in `law.early_stage_prediction`.

  Returns:
    The dict written to `out/law_fit.json`.
  """
  os.makedirs(out, exist_ok=True)
  results = {
      "entropy_key": entropy_key,
      "reward_key": reward_key,
      "fit_fraction": fit_fraction,
      "fit_steps": fit_steps,
      "runs": {},
  }
  for label, run in runs.items():
    results["runs"][label] = analyze_run(
        run, label, entropy_key, reward_key, out, fit_fraction=fit_fraction, fit_steps=fit_steps
    )
  entries = {label: e for label, e in results["runs"].items() if e["points"]["step"]}
  if len(entries) >= 2:
    try:
      joint = law.joint_fit({label: _points(e) for label, e in entries.items()})
    except ValueError as e:
      results["joint_error"] = str(e)
    else:
      results["joint"] = joint.to_dict()
      results["joint"]["per_method"] = method_residuals(joint, entries)
      law.plot_fit(
          {_describe(label, e["method"]): _points(e) for label, e in entries.items()},
          joint.fit,
          os.path.join(out, "law_joint.png"),
          title="all runs, one law",
      )
  by_size: dict[int, dict[str, dict]] = {}
  for label, e in entries.items():
    if e["non_embedding_params"] is not None:
      by_size.setdefault(e["non_embedding_params"], {})[label] = e
  if len(by_size) >= 2:
    sizes = []
    for n_params, group in sorted(by_size.items()):
      try:
        joint = law.joint_fit({label: _points(e) for label, e in group.items()})
      except ValueError as e:
        sizes.append({"non_embedding_params": n_params, "runs": list(group), "error": str(e)})
        continue
      sizes.append(
          {
              "non_embedding_params": n_params,
              "runs": list(group),
              "a": joint.fit.a,
              "b": joint.fit.b,
              "a_stderr": joint.fit.a_stderr,
              "b_stderr": joint.fit.b_stderr,
          }
      )
    results["sizes"] = sizes
    fitted = [s for s in sizes if "a" in s]
    if len({s["non_embedding_params"] for s in fitted}) >= 2:
      results["size_fit"] = law.size_fit(
          [s["non_embedding_params"] for s in fitted],
          [s["a"] for s in fitted],
          [s["b"] for s in fitted],
      ).to_dict()
    if len(fitted) >= 3:
      results["size_holdout"] = size_holdouts(fitted)
  with open(os.path.join(out, "law_fit.json"), "w") as f:
    json.dump(results, f, indent=2, allow_nan=False)
  return results


def method_residuals(joint: law.JointFit, entries: dict[str, dict]) -> dict[str, dict]:
  """Each method's points around the joint curve, pooled over its runs: n, RMSE and bias."""
  by_method: dict[str, list[str]] = {}
  for label, e in entries.items():
    by_method.setdefault(e["method"] or label, []).append(label)
  out = {}
  for method, labels in by_method.items():
    n = sum(joint.per_run_n[x] for x in labels)
    out[method] = {
        "runs": len(labels),
        "n": n,
        "rmse": math.sqrt(sum(joint.per_run_n[x] * joint.per_run_rmse[x] ** 2 for x in labels) / n),
        "bias": sum(joint.per_run_n[x] * joint.per_run_bias[x] for x in labels) / n,
    }
  return out


def size_holdouts(sizes: list[dict]) -> list[dict]:
  """Leave-one-size-out: each size's a and b predicted from the line through the others."""
  out = []
  for i, held in enumerate(sizes):
    rest = sizes[:i] + sizes[i + 1 :]
    counts = [s["non_embedding_params"] for s in rest]
    entry = {"non_embedding_params": held["non_embedding_params"]}
    for coef in ("a", "b"):
      entry[coef] = law.size_holdout(
          counts,
          [s[coef] for s in rest],
          held["non_embedding_params"],
          held[coef],
          held[f"{coef}_stderr"],
      ).to_dict()
    out.append(entry)
  return out


def _pm(value: float, err: float | None) -> str:
  return f"{value:.4g} ± {err:.2g}" if err is not None else f"{value:.4g}"


def _three_places(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.3f}"


def format_table(results: dict) -> str:
  """One line per run (and the joint fit): n, a, b, ceiling, R², RMSE, early-stage errors."""
  header = (
      f"{'run':<28}{'method':<14}{'n':>4}  {'a':<18}{'b':<18}{'ceiling':>9}{'R²':>8}"
      f"{'RMSE':>9}{'early RMSE':>12}{'final err':>11}"
  )
  lines = [header, "-" * len(header)]

  def row(label: str, method: str, n: int, fit: dict | None, early: dict | None) -> str:
    if fit is None:
      return f"{label:<28}{method:<14}{n:>4}  (no fit: see law_fit.json)"
    r2 = f"{fit['r2']:.3f}" if fit["r2"] is not None else "n/a"
    early_rmse = f"{early['heldout_rmse']:.4f}" if early else "n/a"
    final = f"{early['final_error']:+.4f}" if early else "n/a"
    return (
        f"{label:<28}{method:<14}{n:>4}  {_pm(fit['a'], fit['a_stderr']):<18}"
        f"{_pm(fit['b'], fit['b_stderr']):<18}{fit['ceiling']:>9.4f}{r2:>8}"
        f"{fit['rmse']:>9.4f}{early_rmse:>12}{final:>11}"
    )

  for label, e in results["runs"].items():
    lines.append(
        row(label, e["method"], len(e["points"]["step"]), e.get("fit"), e.get("early_stage"))
    )
  if "joint" in results:
    joint = results["joint"]
    lines.append(row("(all runs, joint)", "", joint["fit"]["n"], joint["fit"], None))
    for method, m in joint["per_method"].items():
      lines.append(
          f"  {method:<26} {m['runs']} run(s), {m['n']} points around the joint curve: "
          f"bias {m['bias']:+.4f}, RMSE {m['rmse']:.4f}"
      )
  if "size_fit" in results:
    s = results["size_fit"]
    lines.append(
        f"size fit (ln N): a = {s['a_slope']:.4g}·ln N + {s['a_intercept']:.4g}, "
        f"b = {s['b_slope']:.4g}·ln N + {s['b_intercept']:.4g} over {s['n']} sizes "
        f"(R² {_three_places(s['a_r2'])}, {_three_places(s['b_r2'])})"
    )
  for held in results.get("size_holdout", []):
    cells = [
        f"{c} predicted {held[c]['predicted']:.3f} ± {_three_places(held[c]['interval'])}, "
        f"measured {held[c]['measured']:.3f} ({'within' if held[c]['within'] else 'outside'})"
        for c in ("a", "b")
    ]
    lines.append(f"held out N={held['non_embedding_params']}: " + "; ".join(cells))
  for label, e in results["runs"].items():
    for field in ("fit_error", "early_stage_error"):
      if field in e:
        lines.append(f"{label}: {field.replace('_', ' ')}: {e[field]}")
  return "\n".join(lines)


def load_runs(workdirs: str) -> dict[str, run_logs.Run]:
  """Finds and loads the runs named by `--workdirs`, keyed by short unique labels."""
  paths = run_logs.find_runs(workdirs)
  return {label: run_logs.load_run(p) for label, p in zip(run_logs.labels(paths), paths)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    runs = load_runs(_WORKDIRS.value)
    check_key(runs, _ENTROPY_KEY.value, "entropy_key")
    reward_key = choose_reward_key(runs, _REWARD_KEY.value, flags.FLAGS["reward_key"].present)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(
      f"fitting R = -a*exp(H) + b with H = {_ENTROPY_KEY.value}, R = {reward_key} on "
      f"{len(runs)} run(s)",
      flush=True,
  )
  results = analyze(
      runs,
      _ENTROPY_KEY.value,
      reward_key,
      _OUT.value,
      fit_fraction=_FIT_FRACTION.value,
      fit_steps=_FIT_STEPS.value,
  )
  print(format_table(results))
  pngs = sorted(f for f in os.listdir(_OUT.value) if f.endswith(".png"))
  print(
      f"\nwrote {os.path.join(_OUT.value, 'law_fit.json')} and {len(pngs)} plot(s) to "
      f"{_OUT.value}"
  )


if __name__ == "__main__":
  app.run(main)
