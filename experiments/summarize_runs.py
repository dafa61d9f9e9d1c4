r"""A markdown table of finished runs: entropy, accuracy and diversity at RL start and end.

  python experiments/summarize_runs.py --workdirs=/tmp/entropix_sweep

"End" accuracy is the mean of the last `--last_evals` evaluations (evaluations are noisy:
128 prompts x 8 samples); "end" entropy and distinct correct answers are means over the last
`--last_steps` steps.
"""

from absl import app, flags

from entropix_rl import run_logs

_WORKDIRS = flags.DEFINE_string("workdirs", None, "Run directories or sweep roots (comma-separated, globs).")
_LAST_EVALS = flags.DEFINE_integer("last_evals", 3, "Evaluations averaged for the end accuracy.")
_LAST_STEPS = flags.DEFINE_integer("last_steps", 10, "Steps averaged for end entropy/diversity.")
flags.mark_flags_as_required(["workdirs"])


def summarize(run: run_logs.Run, last_evals: int, last_steps: int) -> dict[str, float]:
  """Start/end entropy (paper's definition), sampled accuracy and distinct correct answers."""
  _, entropy = run.series("entropy/paper")
  _, accuracy = run.series("eval/sampled_accuracy")
  _, distinct = run.series("accuracy/distinct_correct_per_group")
  return {"entropy_start": entropy[0], "entropy_end": entropy[-last_steps:].mean(),
          "accuracy_start": accuracy[0], "accuracy_end": accuracy[-last_evals:].mean(),
          "distinct_start": distinct[:last_steps].mean(),
          "distinct_end": distinct[-last_steps:].mean()}


def main(argv):
  del argv
  paths = run_logs.find_runs(_WORKDIRS.value)
  print("| run | entropy start → end | sampled accuracy start → end | distinct correct / group "
        "start → end |\n| --- | --- | --- | --- |")
  for label, path in zip(run_logs.labels(paths), paths):
    s = summarize(run_logs.load_run(path), _LAST_EVALS.value, _LAST_STEPS.value)
    print(f"| {label} | {s['entropy_start']:.3f} → {s['entropy_end']:.3f} | "
          f"{s['accuracy_start']:.3f} → {s['accuracy_end']:.3f} | "
          f"{s['distinct_start']:.2f} → {s['distinct_end']:.2f} |")


if __name__ == "__main__":
  app.run(main)
