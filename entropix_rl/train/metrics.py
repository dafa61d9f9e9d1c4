"""Metric sinks behind one writer: JSONL, TensorBoard, Weights & Biases (`config.logging`).

Only the primary process writes. Names use `/` groups (`entropy/paper`, `cov/mean`, ...);
the same names and steps go to every sink, one JSONL object per step (docs/design.md). Tables
(sample completions with their rewards) go to `tables/{name}.jsonl`, TensorBoard text and W&B tables.

Weights & Biases (`logging.wandb`) runs online or offline. The run id is kept in
`workdir/wandb_run_id`, so a resumed experiment continues the same W&B run (`resume="allow"`).
W&B cannot delete history, and it drops steps that are not above the last one it holds; since a
resume restores the exact state of the checkpoint, the steps it computes again carry the values
W&B already has, so nothing is lost. Offline runs are written under `{dir}/wandb/offline-run-*`
and uploaded later with `wandb sync`.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import math
import os
import secrets
import tempfile
from typing import Any, Protocol

from absl import logging
from etils import epath
import numpy as np

from entropix_rl import paths
from entropix_rl.checks import check_bool, check_choice, check_int


def _to_float(value: Any) -> float | None:
  try:
    out = float(np.asarray(value))
  except (TypeError, ValueError):
    return None
  return out


@dataclasses.dataclass(frozen=True)
class Table:
  """A small table (for example sample completions with their rewards): column names and rows
  of str/int/float cells."""

  columns: tuple[str, ...]
  rows: tuple[tuple[Any, ...], ...]

  def __post_init__(self):
    bad = [i for i, row in enumerate(self.rows) if len(row) != len(self.columns)]
    if bad:
      raise ValueError(f"table rows {bad} do not have {len(self.columns)} cells {self.columns}")

  def records(self) -> list[dict[str, Any]]:
    return [dict(zip(self.columns, row)) for row in self.rows]

  def markdown(self) -> str:
    """The table as Markdown (TensorBoard's text plugin renders it); `|` and newlines escaped."""
    cell = (
        lambda v: (f"{v:.4g}" if isinstance(v, float) else str(v))
        .replace("|", "\\|")
        .replace("\n", "⏎")
    )
    lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
    return "\n".join(lines)


class MetricSink(Protocol):
  """Where metrics go. Every sink gets the same scalar names and the same steps."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    ...

  def write_table(self, step: int, name: str, table: Table) -> None:
    ...

  def truncate_after(self, step: int) -> None:
    """Forgets what was logged after `step` (a resume from the checkpoint at `step`)."""

  def close(self) -> None:
    ...


def _keep_records_until(path: epath.Path, step: int) -> None:
  """Rewrites a JSONL file keeping records with `step <= step` (and dropping a torn line)."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record.get("step", math.inf) <= step:
      kept.append(line + "\n")
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(kept))
  tmp.replace(path)


class JsonlSink:
  """`workdir/metrics.jsonl`, one `{"step": s, name: value, ...}` line per step (non-finite
  values as null); each table `name` to `workdir/tables/{name}.jsonl`, one line per step with
  its rows as records."""

  def __init__(self, workdir: epath.Path):
    self.path = workdir / "metrics.jsonl"
    self._tables = workdir / "tables"

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    record = {
        "step": int(step),
        **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()},
    }
    paths.append_text(self.path, json.dumps(record) + "\n")

  def write_table(self, step: int, name: str, table: Table) -> None:
    self._tables.mkdir(parents=True, exist_ok=True)
    paths.append_text(
        self._tables / f"{name}.jsonl",
        json.dumps({"step": int(step), "rows": table.records()}) + "\n",
    )

  def truncate_after(self, step: int) -> None:
    _keep_records_until(self.path, step)
    if self._tables.exists():
      for path in sorted(self._tables.glob("*.jsonl")):
        _keep_records_until(path, step)

  def close(self) -> None:
    pass


class TensorBoardSink:
  """Event files in `workdir/tensorboard/` (tensorboardX): scalars, and tables as Markdown text.
  A resume reopens the writer with `purge_step`, so TensorBoard hides the old run's later steps."""

  def __init__(self, logdir: epath.Path):
    self._logdir = os.fspath(logdir)
    self._writer = _summary_writer(self._logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, int(step))

  def write_table(self, step: int, name: str, table: Table) -> None:
    self._writer.add_text(name, table.markdown(), int(step))

  def truncate_after(self, step: int) -> None:
    self._writer.close()
    self._writer = _summary_writer(self._logdir, purge_step=step + 1)

  def close(self) -> None:
    self._writer.close()


def _summary_writer(logdir: str, purge_step: int | None = None):
  from tensorboardX import SummaryWriter  # imported only when TensorBoard is on

  return SummaryWriter(logdir, flush_secs=30, purge_step=purge_step)


WANDB_MODES = ("online", "offline")
RUN_ID_FILE = "wandb_run_id"


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """`config.logging.wandb`.

  Attributes:
    enabled: log to Weights & Biases as well (needs `pip install wandb`).
    mode: "online" (needs a login: `wandb login` or WANDB_API_KEY) or "offline" (no network;
      upload later with `wandb sync DIR/wandb/offline-run-*`).
    project: W&B project.
    entity: W&B team or user ("" = your default entity).
    name: run name ("" = the workdir's name).
    group: run group ("" = none), e.g. one sweep.
    dir: local directory for W&B's files ("" = the workdir, or the system temporary directory
      when the workdir is on object storage).
  """

  enabled: bool = False
  mode: str = "online"
  project: str = "entropix_rl"
  entity: str = ""
  name: str = ""
  group: str = ""
  dir: str = ""

  def __post_init__(self):
    check_choice("logging.wandb.mode", self.mode, WANDB_MODES)
    if self.enabled and not self.project:
      raise ValueError(
          "logging.wandb.project must name a W&B project when " "logging.wandb.enabled=True"
      )


def _import_wandb() -> Any:
  try:
    import wandb
  except ImportError as err:
    raise ImportError(
        "logging.wandb.enabled=True needs the wandb package: " "pip install 'entropix_rl[wandb]'"
    ) from err
  return wandb


class WandbSink:
  """Logs scalars with `step=` and tables as `wandb.Table`s; the run starts at the first write."""

  def __init__(self, cfg: WandbConfig, workdir: epath.Path, run_config: Mapping[str, Any]):
    self.cfg = cfg
    self._wandb = _import_wandb()
    self._workdir = workdir
    self._run_config = dict(run_config)
    self._run = None
    self._resumed_at: int | None = None

  def _local_dir(self) -> str:
    if self.cfg.dir:
      return self.cfg.dir
    return tempfile.gettempdir() if paths.is_remote(self._workdir) else os.fspath(self._workdir)

  def _run_id(self) -> str:
    path = self._workdir / RUN_ID_FILE
    if path.exists():
      return path.read_text().strip()
    run_id = secrets.token_hex(6)
    path.write_text(run_id)
    return run_id

  def _started(self) -> Any:
    if self._run is None:
      directory = self._local_dir()
      os.makedirs(directory, exist_ok=True)
      self._run = self._wandb.init(
          project=self.cfg.project,
          entity=self.cfg.entity or None,
          name=self.cfg.name or self._workdir.name,
          group=self.cfg.group or None,
          mode=self.cfg.mode,
          dir=directory,
          id=self._run_id(),
          resume="allow",
          config=self._run_config,
      )
      logging.info("W&B run %s (%s) in %s", self._run.id, self.cfg.mode, directory)
      if self._resumed_at is not None:
        logging.info(
            "W&B: resumed at step %d; steps W&B already holds are not sent again", self._resumed_at
        )
    return self._run

  def _log(self, step: int, values: Mapping[str, Any]) -> None:
    run = self._started()
    if step < run.step:  # W&B holds this step from before the restart (same values)
      return
    run.log(dict(values), step=int(step))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._log(step, scalars)

  def write_table(self, step: int, name: str, table: Table) -> None:
    self._log(
        step,
        {
            name: self._wandb.Table(
                columns=list(table.columns), data=[list(row) for row in table.rows]
            )
        },
    )

  def truncate_after(self, step: int) -> None:
    self._resumed_at = step

  def close(self) -> None:
    if self._run is not None:
      self._run.finish()
      self._run = None


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
  """`config.logging`: where metrics go besides `metrics.jsonl`, and how often.

  Attributes:
    console_every: RL steps between console lines.
    tensorboard: also write TensorBoard event files (`workdir/tensorboard/`).
    samples_every: RL steps between tables of sample completions with their rewards
      (`workdir/tables/samples.jsonl`, TensorBoard text, a W&B table); 0 = never.
    num_samples: rows per table (the first rollout rows of the step, whole groups first).
    wandb: the Weights & Biases sink (`WandbConfig`).
  """

  console_every: int = 25
  tensorboard: bool = True
  samples_every: int = 25
  num_samples: int = 8
  wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)

  def __post_init__(self):
    check_int("logging.console_every", self.console_every)
    check_bool("logging.tensorboard", self.tensorboard)
    check_int("logging.samples_every", self.samples_every, 0, " (0 = never)")
    check_int("logging.num_samples", self.num_samples)


class MetricWriter:
  """Writes every step's scalars (and tables) to each sink: JSONL always, TensorBoard and
  Weights & Biases when enabled.

  `workdir` may be local or on object storage (`gs://`; paths go through `etils.epath`). Only
  the primary process writes (`enabled`). On resume, `truncate_after(step)` makes each sink
  forget what was logged after the restored checkpoint, so a resumed run shows each step once.
  """

  def __init__(
      self,
      workdir: epath.PathLike,
      *,
      enabled: bool = True,
      tensorboard: bool = True,
      wandb: WandbConfig | None = None,
      run_config: Mapping[str, Any] | None = None,
  ):
    self.enabled = enabled
    workdir = epath.Path(workdir)
    self.path = workdir / "metrics.jsonl"
    self.sinks: list[MetricSink] = []
    if not enabled:
      return
    workdir.mkdir(parents=True, exist_ok=True)
    self.sinks.append(JsonlSink(workdir))
    if tensorboard:
      self.sinks.append(TensorBoardSink(workdir / "tensorboard"))
    if wandb is not None and wandb.enabled:
      self.sinks.append(WandbSink(wandb, workdir, run_config or {}))

  def truncate_after(self, step: int) -> None:
    for sink in self.sinks:
      sink.truncate_after(step)

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Writes the scalar entries of `metrics` (non-scalars are skipped); returns them."""
    scalars = {}
    for name, value in metrics.items():
      v = _to_float(value)
      if v is not None:
        scalars[name] = v
    for sink in self.sinks:
      sink.write_scalars(step, scalars)
    return scalars

  def write_table(self, step: int, name: str, table: Table) -> None:
    for sink in self.sinks:
      sink.write_table(step, name, table)

  def close(self) -> None:
    for sink in self.sinks:
      sink.close()
