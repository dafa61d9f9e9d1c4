r"""Expand a config's `get_sweep()` into runs and launch them locally or on a TPU slice.

  python launch/sweep.py --config=configs/law.py --workdir=/tmp/sweep --dry_run
  python launch/sweep.py --config=configs/law.py --workdir=/tmp/sweep --mode=local
  python launch/sweep.py --config=configs/qwen25_7b.py:clip_cov --workdir=gs://B/sweep \
      --mode=tpu --tpu_name=entropix-v5p --zone=us-east5-a [--config.rl.steps=100]

The config file defines `get_sweep() -> list[dict]`, each dict a setting of dotted overrides,
e.g. `{"loss.name": "clip_cov", "loss.clip_cov.ratio": 0.02, "seed": 1}`. Each setting becomes
one run in `WORKDIR/<name>`, where the name joins `key-value` pairs with `__`, each key by its
shortest unambiguous suffix within the sweep (`name-clip_cov__ratio-0.02__seed-1`, or
`clip_cov.ratio-0.02` when another key also ends in `ratio`). A setting may carry its own name under `_name`.
Extra `--config.k=v` flags on this command line apply to every run (after the setting's).

* `--mode=local` runs `python experiments/train.py --config=CFG --workdir=WORKDIR/<name>
  --config.k=v ...` one after another, printing `[i/n] name`, and skips runs whose workdir
  holds a `DONE` file (written by the trainer when it finishes; a partial run resumes).
  `--jobs=N` runs up to N at once, each writing its console output to `WORKDIR/<name>.log`;
  the first pending run goes alone, so what later runs share (`--config.sft.shared_dir`'s
  warm start) is written once. Small models are bound by Python overhead, so on a 2-core
  machine `--jobs=2` gets through a sweep of the embedded task about twice as fast.
* `--mode=tpu` runs `launch/run.sh TPU_NAME ZONE CFG WORKDIR/<name> --config.k=v ...` per
  setting, one after another (each uses the whole slice). `DONE` is checked with
  `gcloud storage ls` for gs:// workdirs, else on worker 0 over ssh (e.g. a gcsfuse mount).
* A run that exits with code 75 was preempted after saving a checkpoint
  (`entropix_rl.train.checkpoint.PREEMPTED_EXIT_CODE`): it is reported as preempted and run
  again, which resumes it, up to `--max_resumes` times (default 3).
* Ctrl-C in the terminal reaches the running runs too: each saves the step it is in and exits
  with code 130, the sweep starts no further run and exits with 130 once they have saved (a
  second Ctrl-C exits at once). Re-running the command resumes the sweep.
* `--dry_run` only prints the commands (and which runs would be skipped).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
import concurrent.futures
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME_KEY = "_name"
# entropix_rl.train.checkpoint's exit codes (this script imports nothing from the package, so it
# also runs where it is not installed).
PREEMPTED_EXIT_CODE = 75
INTERRUPTED_EXIT_CODE = 130


def load_module(config_path: str):
  """Imports a config file by path (it may import `entropix_rl`); a `:arg` suffix, which
  config_flags passes to `get_config`, is ignored here."""
  config_path = config_path.split(":", 1)[0]
  if REPO_ROOT not in sys.path:  # configs may import each other (`from configs import ...`)
    sys.path.insert(0, REPO_ROOT)
  spec = importlib.util.spec_from_file_location(
      "sweep_config_" + re.sub(r"\W", "_", os.path.basename(config_path)), config_path
  )
  if spec is None or spec.loader is None:
    raise ValueError(f"cannot import config file {config_path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def format_value(value: Any) -> str:
  """A value as `--config.k=` expects it (booleans lower-case, the rest `str`)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  return str(value)


def _short_keys(settings: Sequence[Mapping[str, Any]]) -> dict[str, str]:
  """Each dotted key by its shortest suffix of components that is unique in the sweep."""
  keys = sorted({k for s in settings for k in s if k != NAME_KEY})
  short = {}
  for k in keys:
    parts = k.split(".")
    for n in range(1, len(parts) + 1):
      suffix = ".".join(parts[-n:])
      if sum(1 for other in keys if other == suffix or other.endswith("." + suffix)) == 1:
        break
    short[k] = suffix
  return short


def run_name(setting: Mapping[str, Any], short: Mapping[str, str] | None = None) -> str:
  """`key-value` pairs joined by `__`, restricted to `[A-Za-z0-9._-]`."""
  if NAME_KEY in setting:
    name = str(setting[NAME_KEY])
  else:
    short = short or {}
    name = (
        "__".join(
            f"{short.get(k, k)}-{format_value(v)}" for k, v in setting.items() if k != NAME_KEY
        )
        or "default"
    )
  return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def expand_sweep(config_path: str, sweep_fn: str = "get_sweep") -> list[tuple[str, dict[str, Any]]]:
  """(name, overrides) per setting of the config file's `sweep_fn()`, names unique."""
  module = load_module(config_path)
  if not callable(getattr(module, sweep_fn, None)):
    raise ValueError(f"{config_path} defines no {sweep_fn}()")
  settings = list(getattr(module, sweep_fn)())
  for i, s in enumerate(settings):
    if not isinstance(s, Mapping):
      raise ValueError(f"get_sweep()[{i}] is {type(s).__name__}, expected a dict of overrides")
  short = _short_keys(settings)
  runs, seen = [], {}
  for s in settings:
    name = run_name(s, short)
    if name in seen:
      raise ValueError(
          f"two sweep settings share the run name {name!r}: {seen[name]} and "
          f"{dict(s)}; give them distinct '{NAME_KEY}' entries"
      )
    seen[name] = dict(s)
    runs.append((name, {k: v for k, v in s.items() if k != NAME_KEY}))
  return runs


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  return [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]


def _script(*parts: str) -> str:
  """A repository script's path relative to the current directory (commands run from it)."""
  return os.path.relpath(os.path.join(REPO_ROOT, *parts))


def command_for(
    config_path: str,
    workdir: str,
    overrides: Mapping[str, Any],
    *,
    mode: str = "local",
    tpu_name: str = "",
    zone: str = "",
    python: str = sys.executable,
    extra: Sequence[str] = (),
) -> list[str]:
  """The argv that runs one setting (`extra` are verbatim `--config.k=v` flags)."""
  flags = override_flags(overrides) + list(extra)
  if mode == "local":
    return [
        python,
        _script("experiments", "train.py"),
        f"--config={config_path}",
        f"--workdir={workdir}",
        *flags,
    ]
  if mode == "tpu":
    if not tpu_name or not zone:
      raise ValueError("--mode=tpu needs --tpu_name and --zone")
    return ["bash", _script("launch", "run.sh"), tpu_name, zone, config_path, workdir, *flags]
  raise ValueError(f"mode={mode!r}; allowed: ('local', 'tpu')")


def is_done(workdir: str, *, mode: str = "local", tpu_name: str = "", zone: str = "") -> bool:
  """Whether `workdir/DONE` exists.

  gs:// paths are checked with `gcloud storage ls`; other paths locally in local mode, and on
  worker 0 of the slice (where process 0 writes DONE) in tpu mode. A failed check (no gcloud,
  no slice) counts as not done.
  """
  marker = workdir.rstrip("/") + "/DONE"
  if workdir.startswith("gs://"):
    check = ["gcloud", "storage", "ls", marker]
  elif mode == "tpu":
    check = [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        tpu_name,
        f"--zone={zone}",
        "--worker=0",
        f"--command=test -f {shlex.quote(marker)}",
    ]
  else:
    return os.path.exists(marker)
  try:
    return subprocess.run(check, capture_output=True, check=False).returncode == 0
  except FileNotFoundError:
    return False


def run_sweep(
    config_path: str,
    base_workdir: str,
    *,
    mode: str = "local",
    tpu_name: str = "",
    zone: str = "",
    dry_run: bool = False,
    extra: Sequence[str] = (),
    only: str = "",
    python: str = sys.executable,
    sweep_fn: str = "get_sweep",
    jobs: int = 1,
    max_resumes: int = 3,
    runner: Callable[..., Any] = subprocess.run,
    log: Callable[[str], None] = print,
    interrupted: threading.Event | None = None,
) -> list[tuple[str, str]]:
  """Runs (or prints) every setting; returns (name, status) per run, in sweep order.

  Status is "done" (skipped: DONE exists), "dry_run", "ok", "preempted (rc=75)" (still
  preempted after `max_resumes` resumes), "interrupted (rc=130)", "not run (interrupted)" or
  "failed (rc=N)". A preempted run (exit code 75) is run again, which resumes it from its
  checkpoint. Once a run exits with 130 (Ctrl-C) or `interrupted` is set, no run starts.
  Runs whose name does not contain `only` are left out. A failed run does not stop the sweep.
  With `jobs` > 1 (local mode), the first pending run goes alone, then up to `jobs` at once,
  each with its output in `<base_workdir>/<name>.log`; if that first run fails, the others
  are not started (status "not run (first run failed)"), since they would fail alike.
  """
  if jobs < 1 or (jobs > 1 and mode != "local"):
    raise ValueError(f"jobs={jobs}; allowed: 1, or more with --mode=local")
  runs = [(n, o) for n, o in expand_sweep(config_path, sweep_fn) if only in n]
  interrupted = interrupted or threading.Event()
  statuses: dict[str, str] = {}
  pending = []
  for i, (name, overrides) in enumerate(runs, 1):
    workdir = base_workdir.rstrip("/") + "/" + name
    cmd = command_for(
        config_path,
        workdir,
        overrides,
        mode=mode,
        tpu_name=tpu_name,
        zone=zone,
        python=python,
        extra=extra,
    )
    prefix = f"[{i}/{len(runs)}] {name}"
    if is_done(workdir, mode=mode, tpu_name=tpu_name, zone=zone):
      log(f"{prefix}: DONE exists in {workdir}, skipped")
      statuses[name] = "done"
    elif dry_run:
      log(f"{prefix}: {shlex.join(cmd)}")
      statuses[name] = "dry_run"
    else:
      pending.append((prefix, name, cmd))

  def run_once(name: str, cmd: list[str], attempt: int) -> int:
    if jobs == 1:
      return runner(cmd, check=False).returncode
    os.makedirs(base_workdir, exist_ok=True)
    with open(os.path.join(base_workdir, name + ".log"), "a" if attempt else "w") as out:
      return runner(cmd, check=False, stdout=out, stderr=subprocess.STDOUT).returncode

  def launch(prefix: str, name: str, cmd: list[str]) -> None:
    if interrupted.is_set():
      statuses[name] = "not run (interrupted)"
      return
    log(f"{prefix}: {shlex.join(cmd)}")
    rc = run_once(name, cmd, 0)
    for attempt in range(1, max_resumes + 1):
      if rc != PREEMPTED_EXIT_CODE or interrupted.is_set():
        break
      log(f"{prefix}: preempted (checkpoint saved); resuming, attempt {attempt}/{max_resumes}")
      rc = run_once(name, cmd, attempt)
    if rc == INTERRUPTED_EXIT_CODE:
      interrupted.set()
    statuses[name] = {
        0: "ok",
        PREEMPTED_EXIT_CODE: f"preempted (rc={rc})",
        INTERRUPTED_EXIT_CODE: f"interrupted (rc={rc})",
    }.get(rc, f"failed (rc={rc})")
    log(f"{prefix}: {statuses[name]}")

  if pending:
    launch(*pending[0])
    if jobs > 1 and statuses[pending[0][1]] != "ok" and not interrupted.is_set():
      log(
          f"{pending[0][0]} failed; see {base_workdir}/{pending[0][1]}.log. Not starting the "
          f"other {len(pending) - 1} runs."
      )
      for _, name, _ in pending[1:]:
        statuses[name] = "not run (first run failed)"
      pending = pending[:1]
  with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    for future in [pool.submit(launch, *p) for p in pending[1:]]:
      future.result()
  return [(name, statuses[name]) for name, _ in runs]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--config", required=True, help="config file defining get_sweep()")
  parser.add_argument("--workdir", required=True, help="base directory; one subdir per run")
  parser.add_argument("--mode", choices=("local", "tpu"), default="local")
  parser.add_argument("--tpu_name", default="")
  parser.add_argument("--zone", default="")
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  parser.add_argument(
      "--sweep", default="get_sweep", help="the config file's function returning the settings"
  )
  parser.add_argument("--only", default="", help="run only settings whose name contains this")
  parser.add_argument("--python", default=sys.executable, help="interpreter for --mode=local")
  parser.add_argument(
      "--jobs",
      type=int,
      default=1,
      help="runs at once in --mode=local (the first pending run goes alone)",
  )
  parser.add_argument(
      "--max_resumes",
      type=int,
      default=3,
      help="times a preempted run (exit code 75) is run again to resume it",
  )
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {bad} (only --config.k=v overrides pass through)")
  return args, rest


def _stop_on_ctrl_c() -> threading.Event:
  """A SIGINT handler for the sweep: the first Ctrl-C (which the terminal also sends to the
  running runs, so they save) starts no new run; the second exits at once."""
  interrupted = threading.Event()

  def on_sigint(signum, frame):
    del signum, frame
    if interrupted.is_set():
      os._exit(INTERRUPTED_EXIT_CODE)
    interrupted.set()
    print(
        "Ctrl-C: the running runs save their step and stop; no new run starts "
        "(Ctrl-C again exits at once)",
        flush=True,
    )

  signal.signal(signal.SIGINT, on_sigint)
  return interrupted


def main(argv: Sequence[str] | None = None) -> int:
  args, extra = parse_args(sys.argv[1:] if argv is None else argv)
  interrupted = _stop_on_ctrl_c()
  results = run_sweep(
      args.config,
      args.workdir,
      mode=args.mode,
      tpu_name=args.tpu_name,
      zone=args.zone,
      dry_run=args.dry_run,
      extra=extra,
      only=args.only,
      python=args.python,
      sweep_fn=args.sweep,
      jobs=args.jobs,
      max_resumes=args.max_resumes,
      interrupted=interrupted,
  )
  failed = [n for n, s in results if s.startswith("failed")]
  preempted = [n for n, s in results if s.startswith("preempted")]
  print(
      f"{len(results)} runs: {sum(s == 'done' for _, s in results)} already done, "
      f"{sum(s == 'ok' for _, s in results)} ok, {len(failed)} failed"
      + (f" ({', '.join(failed)})" if failed else "")
      + f", {len(preempted)} preempted"
      + (f" ({', '.join(preempted)})" if preempted else "")
      + f", {sum(s.startswith('interrupted') for _, s in results)} interrupted"
      + f", {sum(s.startswith('not run') for _, s in results)} not run"
  )
  if failed:
    return 1
  if interrupted.is_set():
    return INTERRUPTED_EXIT_CODE
  return PREEMPTED_EXIT_CODE if preempted else 0


if __name__ == "__main__":
  sys.exit(main())
