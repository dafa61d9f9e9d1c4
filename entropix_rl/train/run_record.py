"""A run's record in its workdir, and the check of every re-run against it.

`run_info.json` is written when a run starts: the method's name, the whole config (as its
config file would hold it) and its fingerprint, the model's facts (the law's size fit reads the
non-embedding parameter count), and the list of config changes made since. A re-run into the
same workdir resumes the run, so it must be the same experiment: it may change only the fields
that say how long and where the run goes and what it reports (`RESUMABLE`: the number of RL
steps, logging, the evaluation and checkpoint cadence, the mesh and the processes, where the
warm start is kept). Any other
difference is refused before any work (`ConfigChanged`), naming each field with its old and new
value, unless the binary runs with `--allow_config_change`; every change that goes through is
appended to `config_changes` with the step it took effect at. A re-run with nothing left to do
(its latest checkpoint is at `rl.steps` or beyond) changes no file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any

from etils import epath
import jax

from entropix_rl.train import config_dict
from entropix_rl.train.config import ConfigError, Experiment, ExperimentConfig, method_name

RUN_INFO = "run_info.json"
# Fields a re-run may change: how long and where the run goes and what it reports, never what it
# computes. A key ending in "." covers its whole section.
RESUMABLE = (
    "rl.steps",
    "logging.",
    "eval.every",
    "checkpoint.",
    "mesh.",
    "distributed.",
    "sft.shared_dir",  # a resumed run never reads its warm start again
    "sft.log_every",
)
ALLOW_FLAG = "--allow_config_change"


class ConfigChanged(ConfigError):
  """A re-run's config differs from the run's in a field that changes what it computes."""


def fingerprint(config: ExperimentConfig) -> str:
  """A short hash of the whole config (the same config always gives the same one)."""
  text = json.dumps(config_dict.flat(config), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def resumable(key: str) -> bool:
  """Whether a re-run may change the field `key` without `--allow_config_change`."""
  return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def changes(old: ExperimentConfig, new: ExperimentConfig) -> dict[str, tuple[Any, Any]]:
  """`{dotted key: (old value, new value)}` for every field that differs."""
  a, b = config_dict.flat(old), config_dict.flat(new)
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def read(workdir: epath.Path) -> dict[str, Any] | None:
  """The run's `run_info.json`, or None for a new workdir."""
  path = workdir / RUN_INFO
  return json.loads(path.read_text()) if path.exists() else None


def check_rerun(
    info: dict[str, Any], config: ExperimentConfig, *, allow_change: bool
) -> dict[str, tuple[Any, Any]]:
  """The fields in which `config` differs from the run's recorded one.

  Raises:
    ConfigChanged: when a field outside `RESUMABLE` differs and `allow_change` is off, naming
      every such field with its old and new value and the flag that allows the change.
  """
  changed = changes(config_dict.typed(info["config"]), config)
  blocked = {k: v for k, v in changed.items() if not resumable(k)}
  if blocked and not allow_change:
    fields = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in blocked.items())
    raise ConfigChanged(
        f"this workdir holds a run of another config ({info.get('method', '?')}, recorded in "
        f"run_info.json), and a re-run resumes it; it differs in {fields}. Use another "
        f"--workdir for a new run, or pass {ALLOW_FLAG} to continue this run with the new "
        "settings (the change is recorded in run_info.json). Only the run's length, logging, "
        "evaluation and checkpoint cadence, mesh and processes may change without it."
    )
  return changed


def write(
    workdir: epath.Path,
    exp: Experiment,
    *,
    changed: dict[str, tuple[Any, Any]] | None = None,
    at_step: int = 0,
) -> None:
  """Writes `run_info.json` for a new run, or records `changed` (what a re-run changed, from
  step `at_step` on) in the existing one; with nothing changed an existing record is left
  as it is."""
  info = read(workdir)
  if info is not None and not changed:
    return
  record = {
      "method": method_name(exp.config),
      "fingerprint": fingerprint(exp.config),
      "config": config_dict.as_config_dict(exp.config).to_dict(),
      "model": dataclasses.asdict(exp.model),
      "non_embedding_params": exp.model.num_params(include_embeddings=False),
      "params": exp.model.num_params(),
      "process_count": jax.process_count(),
      "device_count": jax.device_count(),
      "config_changes": [] if info is None else list(info.get("config_changes", [])),
  }
  if info is not None:
    record["config_changes"].append(
        {
            "at_step": at_step,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "changed": {k: {"old": old, "new": new} for k, (old, new) in changed.items()},
        }
    )
  (workdir / RUN_INFO).write_text(json.dumps(record, indent=2, default=str))
