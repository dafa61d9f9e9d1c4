r"""The quickstart comparison: GRPO, Clip-Cov and KL-Cov on the same seed, SFT warm start and budget.

  python experiments/quickstart.py --workdir=/tmp/entropix_quickstart

Runs one shared SFT warm start, then each method in `--methods` from it, prints a table
(method, entropy at RL start and end, accuracy, distinct correct answers per group) and writes
`comparison.png` (entropy and accuracy against step) and `comparison.json` to the workdir.
Re-running resumes unfinished methods and skips finished ones. A method stopped by SIGTERM
saves and exits with code 75, by Ctrl-C with code 130 (docs/reliability.md); `--print_config`
prints the base config.
"""

import json
import os
import sys
import time

from absl import app, flags

from entropix_rl import console, plots, run_logs
from entropix_rl.train import cli, loop
from entropix_rl.train.checkpoint import INTERRUPTED_EXIT_CODE
from entropix_rl.train.config_dict import apply_overrides, typed

_CONFIG = cli.define_config("configs/quickstart.py", "Base config shared by every method.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/entropix_quickstart", "Output directory.")
_METHODS = flags.DEFINE_list(
    "methods",
    ["grpo", "clip_cov", "kl_cov"],
    "Methods to compare: grpo, clip_higher, clip_cov, kl_cov, "
    "high_entropy_tokens, entropy_bonus.",
)

METHOD_OVERRIDES = {
    "grpo": {"loss.name": "ppo"},
    "clip_higher": {"loss.name": "ppo", "loss.clip_eps_high": 0.28},
    "clip_cov": {"loss.name": "clip_cov"},
    "kl_cov": {"loss.name": "kl_cov"},
    "high_entropy_tokens": {"loss.name": "high_entropy_tokens"},
    "entropy_bonus": {"loss.name": "ppo", "loss.entropy_bonus.coef": 0.005},
}
flags.register_validator(
    "methods",
    lambda methods: set(methods) <= set(METHOD_OVERRIDES),
    message=f"allowed methods: {', '.join(METHOD_OVERRIDES)}",
)


def method_config(base, method: str):
  config = base.copy_and_resolve_references()
  with config.unlocked():
    apply_overrides(config, METHOD_OVERRIDES[method])
    config.method = method
  return config


def summarize(workdir: str, methods: list[str]) -> list[dict]:
  return [
      dict(method=m, **run_logs.summarize_run(run_logs.load_run(os.path.join(workdir, m))))
      for m in methods
  ]


def main(argv):
  console.configure()
  del argv
  cli.answer_and_exit(_CONFIG.value, sys.argv)
  base = _CONFIG.value
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  for method in _METHODS.value:
    config = method_config(base, method)
    with config.unlocked():
      config.sft.shared_dir = workdir
    run_dir = os.path.join(workdir, method)
    if os.path.exists(os.path.join(run_dir, "DONE")):
      print(f"{method}: already finished in {run_dir}", flush=True)
      continue
    print(f"=== {method} ===", flush=True)
    with cli.one_line_errors():
      try:
        loop.run(typed(config), run_dir)
      except loop.Stopped as stop:
        print(f"{method}: {stop}", flush=True)
        sys.exit(stop.exit_code)
      except KeyboardInterrupt:  # Ctrl-C before the method's first RL step
        print(f"{method}: interrupted before its first RL step; re-run to go on", flush=True)
        sys.exit(INTERRUPTED_EXIT_CODE)
  rows = summarize(workdir, _METHODS.value)
  header = (
      f"{'method':<22}{'entropy start':>14}{'entropy end':>13}{'sampled acc start':>19}"
      f"{'sampled acc end':>17}{'greedy acc end':>16}{'distinct ok/group':>19}"
  )
  print("\n" + header + "\n" + "-" * len(header))
  for r in rows:
    print(
        f"{r['method']:<22}{r['entropy_start']:>14.3f}{r['entropy_end']:>13.3f}"
        f"{r['accuracy_start']:>19.3f}{r['accuracy_end']:>17.3f}{r['greedy_accuracy_end']:>16.3f}"
        f"{r['distinct_end']:>19.2f}"
    )
  print("(end = mean of the last 3 evaluations / last 10 steps)")
  with open(os.path.join(workdir, "comparison.json"), "w") as f:
    json.dump(rows, f, indent=2)
  png = plots.plot_runs(
      {m: os.path.join(workdir, m) for m in _METHODS.value}, os.path.join(workdir, "comparison.png")
  )
  print(f"\nwrote {png} and comparison.json; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
