"""Metric sinks behind one writer: JSONL, TensorBoard, Weights & Biases; console progress.

Only the primary process writes. Names use `/` groups (`entropy/paper`, `cov/mean`, ...);
the same names and steps go to every sink, one JSONL object per step (docs/design.md). Tables
(sample completions with their rewards) go to `tables/{name}.jsonl`, TensorBoard text and W&B tables.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import math
import os
import time
from typing import Any, Protocol

from absl import logging
from etils import epath
import numpy as np

from entropix_rl import paths
from entropix_rl.train.wandb_sink import WandbConfig, WandbSink


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


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """One INFO log line every `every` steps: step, step time, ETA and a few chosen metrics."""

  def __init__(
      self,
      total_steps: int,
      *,
      start_step: int = 0,
      every: int = 10,
      keys: tuple[str, ...] = (),
      label: str = "",
      enabled: bool = True,
  ):
    self.total, self.start, self.every, self.keys = total_steps, start_step, max(1, every), keys
    self.label, self.enabled = label, enabled
    self._t0 = time.perf_counter()

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    """Reports after finishing `step` (1-based count of steps done)."""
    if not self.enabled or (step % self.every and step != self.total):
      return
    done = step - self.start
    elapsed = time.perf_counter() - self._t0
    rate = elapsed / max(done, 1)
    shown = " ".join(
        f"{k.split('/')[-1] if k.count('/') else k}={metrics[k]:.4g}"
        for k in self.keys
        if k in metrics
    )
    prefix = f"[{self.label}] " if self.label else ""
    logging.info(
        "%sstep %d/%d | %.2fs/step | elapsed %s | ETA %s | %s",
        prefix,
        step,
        self.total,
        rate,
        _duration(elapsed),
        _duration(rate * (self.total - step)),
        shown,
    )
