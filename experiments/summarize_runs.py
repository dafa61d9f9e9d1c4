r"""A markdown table of finished runs: entropy, accuracy and diversity at RL start and end.

  python experiments/summarize_runs.py --workdirs=/tmp/entropix_sweep

Start and end values are defined by `entropix_rl.run_logs.summarize_run`, as in the table the
quickstart prints.
"""

from absl import app, flags

from entropix_rl import run_logs

_WORKDIRS = flags.DEFINE_string(
    "workdirs", None, "Run directories or sweep roots (comma-separated, globs)."
)
_LAST_EVALS = flags.DEFINE_integer("last_evals", 3, "Evaluations averaged for the end accuracy.")
_LAST_STEPS = flags.DEFINE_integer("last_steps", 10, "Steps averaged for end entropy/diversity.")
flags.mark_flags_as_required(["workdirs"])


def main(argv):
  del argv
  paths = run_logs.find_runs(_WORKDIRS.value)
  print(
      "| run | entropy start → end | sampled accuracy start → end | distinct correct / group "
      "start → end |\n| --- | --- | --- | --- |"
  )
  for label, path in zip(run_logs.labels(paths), paths):
    s = run_logs.summarize_run(
        run_logs.load_run(path), last_evals=_LAST_EVALS.value, last_steps=_LAST_STEPS.value
    )
    print(
        f"| {label} | {s['entropy_start']:.3f} → {s['entropy_end']:.3f} | "
        f"{s['accuracy_start']:.3f} → {s['accuracy_end']:.3f} | "
        f"{s['distinct_start']:.2f} → {s['distinct_end']:.2f} |"
    )


if __name__ == "__main__":
  app.run(main)
