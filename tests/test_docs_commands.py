"""The commands of the README and docs/*.md, run as the docs write them.

Every command in a ```bash block, and every `python ...` command quoted in the prose, is taken
from the file's text. Those that run on CPU run here,
shortened with overrides appended to the command (a tiny model, a few steps, one setting of a
sweep) and with `/tmp/...` paths moved under a temporary directory; a command that reads what
an earlier one of the same file wrote runs after it. `SKIPPED` lists the ones that need a TPU
slice, a GPU, a cloud account or a server, with the reason; those that train still have their
flags and config checked (`--print_config`). A new command in the docs fails
`test_every_command_is_run_or_skipped_with_a_reason` until it is one or the other.
"""

import glob
import os
import re
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(f"{REPO}/docs/*.md"))

# Appended to every training command (later flags win): a tiny model and one or two steps.
TINY = (
    "--config.sft.steps=4 --config.sft.batch_size=16 --config.rl.steps=2 "
    "--config.rl.prompts_per_step=8 --config.rl.num_minibatches=2 --config.eval.every=1 "
    "--config.eval.num_prompts=8 --config.model.hidden_size=32 --config.model.num_layers=1 "
    "--config.model.head_dim=8 --config.model.intermediate_size=64 "
    "--config.logging.tensorboard=false --config.checkpoint.save_every=1 "
    "--config.rl.dynamics_every=1"
)
# What shortens each kind of command, by the script it runs.
SHORTER = {
    "experiments/train.py": TINY,
    "experiments/quickstart.py": TINY + " --methods=grpo",
    "launch/sweep.py": TINY + " --jobs=1",
    "experiments/theorem_probe.py": TINY
    + " --num_rollouts=1 --sgd_lrs=1e-3 --adam_lrs=1e-4 --multi_lrs=3e-4 --ks=1,2"
    " --scatter_points=50",
    "experiments/evaluate.py": "--num_prompts=8 --n=2",
    "benchmarks/memory.py": "--functions=rl_update",
    "benchmarks/memory_targets.py": "--only=v5p-32 --functions=rl_update",
    "benchmarks/packing_flops.py": "--samples=256",
    "benchmarks/sampler.py": "--shapes=toy --repeats=1",
    "benchmarks/long_tail_sampler.py": "--figures=refill --repeats=1 --prompts=4 "
    "--new_tokens=32 --decode_rows=16",
    "benchmarks/step_profile.py": "--steps=1",
    "benchmarks/long_tail_update.py": "--prompts=4 --new_tokens=64 --repeats=1",
    "benchmarks/losses.py": "--batch=4 --time=64 --hidden=32 --vocab=256 --repeats=1",
    "benchmarks/token_stats.py": "--vocab=4096 --hidden=128 --batch=2 --time=256 "
    "--time_tokens=256 --time_hidden=32 --time_vocab=512 --repeats=1",
    "docs/build_api.py": "",
}
# The first setting of each sweep the docs run (`launch/sweep.py --only`).
FIRST_SETTING = {
    "get_sweep": "grpo_seed0",
    "get_size_lr_sweep": "w192_lr0.0001_seed0",
    "get_size_sweep": "w192_lr0.0003_seed0",
    "get_kl_cov_sweep": "kl_cov_coef0_seed0",
    "get_zoo_sweep": "grpo_seed0",
    "clip_bounds": "symmetric_seed0",
}
# Commands that read the output of a whole sweep read the committed logs of that sweep instead.
COMMITTED_LOGS = {"/tmp/law": "notebooks/data/law", "/tmp/law_sizes": "notebooks/data/size_law"}

# (regex on the command, why it does not run here). Training commands among them are still
# checked with --print_config (`CHECKED`).
SKIPPED = [
    (r"^pip install", "installs packages: the README's two set-up commands are what CI runs"),
    (r"-m pytest", "the test suite itself"),
    (r"launch/(create_tpu|install|run)\.sh|gcloud |QUEUED=", "needs a Cloud TPU slice"),
    (r"--mode=tpu", "needs a Cloud TPU slice"),
    (
        r"experiments/train\.py .*configs/qwen25_",
        "needs a Qwen2.5 checkpoint and a TPU slice or GPUs",
    ),
    (r"--checkpoint=/data/Qwen", "needs a Qwen2.5 checkpoint (no weights are downloaded here)"),
    (r"^tensorboard ", "starts a server (and needs `pip install tensorboard`)"),
    (
        r"benchmarks/rl_step\.py",
        "compares against TRL and tunix: needs the `bench` extra and a tunix environment, which "
        "the test install leaves out",
    ),
]
CHECKED = r"^python experiments/train\.py .*configs/qwen25_"


def doc_commands(path: str) -> list[str]:
  """The commands of `path`'s ```bash blocks (continuations joined, a quoted argument over
  several lines kept whole, comments and optional `[...]` parts dropped, `pip install ... &&
  CMD` split in two; a block with a shell loop is one command), then the `python ...` commands
  its prose quotes."""
  text = open(os.path.join(REPO, path)).read()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    lines, pending = [], ""
    for raw in re.sub(r"\\\n\s*", " ", block).splitlines():
      line = re.sub(r"\s+#.*$", "", raw).strip()
      if not line or (line[0] == "#" and not pending):
        continue
      pending = f"{pending}\n{line}" if pending else line
      if pending.count("'") % 2 == 0:
        lines.append(re.sub(r"\s+\[--[^\]\n]*\]", "", pending))
        pending = ""
    if any(line.startswith("for ") for line in lines):
      commands.append("\n".join(lines))
      continue
    for line in lines:
      if line.startswith("pip install") and " && " in line:
        commands += line.split(" && ", 1)
      else:
        commands.append(line)
  prose = re.sub(r"```.*?```", "", text, flags=re.S)
  return commands + re.findall(r"`(python [^`]+)`", prose)


def skip_reason(command: str) -> str | None:
  return next((why for pattern, why in SKIPPED if re.search(pattern, command)), None)


def shortened(command: str, tmp: str, port: int) -> str:
  """The command with its paths under `tmp` and its shortening flags appended."""
  for sweep_dir, logs in COMMITTED_LOGS.items():
    if "--workdirs=" + sweep_dir in command:
      command = command.replace("--workdirs=" + sweep_dir, "--workdirs=" + logs)
  command = re.sub(r"(?<![\w/])/tmp/", f"{tmp}/", command).replace("12355", str(port))
  for script, short in SHORTER.items():
    if script not in command:
      continue
    flags = short
    if script == "launch/sweep.py":
      sweep = re.search(r"--sweep=(\w+)", command)
      key = (
          sweep.group(1) if sweep else ("clip_bounds" if "clip_bounds" in command else "get_sweep")
      )
      flags = "" if "--dry_run" in command else f"{short} --only={FIRST_SETTING[key]}"
    command = re.sub(
        rf"({re.escape(script)}[^&\n]*?)(\s*&?)$", rf"\1 {flags}\2", command, flags=re.M
    )
  return command


def run(command: str, env: dict) -> subprocess.CompletedProcess:
  proc = subprocess.run(
      ["bash", "-c", command.replace("python ", f"{sys.executable} ")],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
  return proc


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_every_command_is_run_or_skipped_with_a_reason():
  commands = [c for path in DOCS for c in doc_commands(path)]
  assert len(commands) > 25
  for command in commands:
    runnable = re.match(r"^(python |WORKDIR=)", command) is not None
    assert runnable or skip_reason(
        command
    ), f"a command that neither runs nor is skipped: {command}"


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCS)
def test_the_commands_of_the_docs_run(path, tmp_path):
  env = {**os.environ, "PYTHONPATH": REPO}
  port = _free_port()
  for command in doc_commands(path):
    if re.search(CHECKED, command):
      out = run(f"{command} --print_config", env).stdout
      if "distributed" in command:  # a one-node command turns the recipe's multi-host mode off
        assert re.search(r"distributed:\n\s+coordinator_address: ''\n\s+enabled: false", out)
      continue
    if skip_reason(command) or command in _RAN:  # the same command in another file ran
      continue
    _RAN.add(command)
    run(shortened(command, os.fspath(tmp_path), port), env)


_RAN: set[str] = set()
