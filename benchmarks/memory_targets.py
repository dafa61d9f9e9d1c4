r"""The paper-scale memory targets of docs/scaling.md, compiled: one command for all of them.

  python benchmarks/memory_targets.py [--validate] > /tmp/targets.jsonl
  python benchmarks/memory_targets.py --only=v5p-32 --functions=rl_update   # one target's update

Runs `benchmarks/memory.py` (in a subprocess each, since the simulated device count must be
set before JAX starts) for the four targets below at the paper's settings (256 prompts x 8
responses, prompts up to 2048 tokens, responses up to 8192), prints its JSON lines, and then
a markdown table of the compiled per-device GiB (the one in docs/scaling.md). `--validate`
also compiles every target in float32, where XLA:CPU makes no float32 copies of bfloat16
operands, to check the analytic model against the compiler. About 2 minutes on 2 CPU cores
(4 minutes with `--validate`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

_VALIDATE = flags.DEFINE_bool("validate", False, "Also compile every target in float32.")
_ONLY = flags.DEFINE_string("only", "", "Only the targets whose label contains this.")
_FUNCTIONS = flags.DEFINE_list(
    "functions", [], "benchmarks/memory.py's --functions (default: all of them)."
)

HERE = os.path.dirname(os.path.abspath(__file__))

# (label, config, arch, devices, mesh, chip, overrides): the recipes' own knobs for the slices
# their docstrings name, and the overrides for the other two targets.
TARGETS = (
    ("Qwen2.5-7B, v5p-32", "configs/qwen25_7b.py:clip_cov", "qwen2.5-7b", 16, "1,4,4", "v5p", ()),
    (
        "Qwen2.5-7B, v6e-64",
        "configs/qwen25_7b.py:clip_cov",
        "qwen2.5-7b",
        64,
        "1,16,4",
        "v6e",
        (
            "--config.rl.micro_batch_size=1",
            "--config.rl.logprob_micro_batch_size=1",
            "--config.sft.micro_batch_size=1",
        ),
    ),
    ("Qwen2.5-32B, v5p-128", "configs/qwen25_32b.py:kl_cov", "qwen2.5-32b", 64, "1,8,8", "v5p", ()),
    (
        "Qwen2.5-7B, 8x H100",
        "configs/qwen25_7b.py:clip_cov",
        "qwen2.5-7b",
        8,
        "1,2,4",
        "h100",
        (
            "--config.rl.micro_batch_size=1",
            "--config.rl.logprob_micro_batch_size=2",
            "--config.sft.micro_batch_size=1",
            "--config.sampler.max_decode_rows=256",
        ),
    ),
)


def run_target(config, arch, devices, mesh, chip, overrides, dtype) -> list[dict]:
  functions = [f"--functions={','.join(_FUNCTIONS.value)}"] if _FUNCTIONS.value else []
  cmd = [
      sys.executable,
      os.path.join(HERE, "memory.py"),
      f"--config={config}",
      f"--arch={arch}",
      f"--devices={devices}",
      f"--mesh={mesh}",
      f"--chip={chip}",
      f"--dtype={dtype}",
      *functions,
      *overrides,
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def table(rows: list[tuple[str, dict]]) -> str:
  """Per-device GiB: compiled, the CPU-only float32 copies, what is left, the estimate."""
  lines = [
      "| target | function | dtype | compiled | CPU f32 copies | compiled − copies | "
      "estimate | (compiled − copies) / estimate | of HBM | fits |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for label, r in rows:
    net = r["peak_without_cpu_copies_gib"]
    lines.append(
        f"| {label} | {r['function']} | {r['dtype']} | {r['peak_gib']:.1f} | "
        f"{r['cpu_f32_copies_gib']:.1f} | {net:.1f} | {r['estimate_gib']:.1f} | "
        f"{net / r['estimate_gib']:.2f} | {net / r['hbm_gib']:.0%} of {r['hbm_gib']:.0f} | "
        f"{'yes' if net <= 0.9 * r['hbm_gib'] else 'no'}"
        f"{'' if r['fits'] else ' (compiled with the copies: no)'} |"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  rows = []
  for dtype in ("bfloat16", "float32") if _VALIDATE.value else ("bfloat16",):
    for label, *target in TARGETS:
      if _ONLY.value not in label:
        continue
      for record in run_target(*target, dtype):
        print(json.dumps(record), flush=True)
        rows.append((label, record))
  print(table(rows))


if __name__ == "__main__":
  app.run(main)
