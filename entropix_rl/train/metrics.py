"""Metric sinks: JSONL, TensorBoard event files and console progress with an ETA.

Only the primary process writes. Names use `/` groups (`entropy/paper`, `cov/mean`, ...);
the same names go to both files, one JSONL object per step (docs/design.md).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import numpy as np
from etils import epath

from entropix_rl import paths


def _to_float(value: Any) -> float | None:
  try:
    out = float(np.asarray(value))
  except (TypeError, ValueError):
    return None
  return out


class MetricWriter:
  """Appends `{"step": s, name: value, ...}` lines to `workdir/metrics.jsonl` and TensorBoard.

  `workdir` may be local or on object storage (`gs://`; paths go through `etils.epath`). On
  resume, `truncate_after(step)` drops lines logged after the restored checkpoint, so a
  resumed run's file holds each step once.
  """

  def __init__(self, workdir: epath.PathLike, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not enabled:
      return
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    self._tb_dir = os.fspath(epath.Path(workdir) / "tensorboard")
    if tensorboard:
      self._tb = _summary_writer(self._tb_dir)

  def truncate_after(self, step: int) -> None:
    """Keeps only the records with `step <= step` (and drops a torn last line); TensorBoard
    gets a purge at `step + 1`, so it hides the old run's later steps too."""
    if not self.enabled:
      return
    if self._tb is not None:
      self._tb.close()
      self._tb = _summary_writer(self._tb_dir, purge_step=step + 1)
    if not self.path.exists():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if record.get("step", math.inf) <= step:
        kept.append(line + "\n")
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(self.path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Writes the scalar entries of `metrics` (non-scalars are skipped); returns them."""
    scalars = {}
    for name, value in metrics.items():
      v = _to_float(value)
      if v is not None:
        scalars[name] = v
    if not self.enabled:
      return scalars
    record = {"step": int(step), **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
    paths.append_text(self.path, json.dumps(record) + "\n")
    if self._tb is not None:
      for name, v in scalars.items():
        self._tb.add_scalar(name, v, int(step))
    return scalars

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _summary_writer(logdir: str, purge_step: int | None = None):
  from tensorboardX import SummaryWriter  # imported only when TensorBoard is on
  return SummaryWriter(logdir, flush_secs=30, purge_step=purge_step)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """One console line every `every` steps: step, step time, ETA and a few chosen metrics."""

  def __init__(self, total_steps: int, *, start_step: int = 0, every: int = 10,
               keys: tuple[str, ...] = (), label: str = "", stream: TextIO | None = None,
               enabled: bool = True):
    self.total, self.start, self.every, self.keys = total_steps, start_step, max(1, every), keys
    self.label, self.stream, self.enabled = label, stream, enabled
    self._t0 = time.perf_counter()

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    """Reports after finishing `step` (1-based count of steps done)."""
    if not self.enabled or (step % self.every and step != self.total):
      return
    done = step - self.start
    elapsed = time.perf_counter() - self._t0
    rate = elapsed / max(done, 1)
    shown = " ".join(f"{k.split('/')[-1] if k.count('/') else k}={metrics[k]:.4g}"
                     for k in self.keys if k in metrics)
    prefix = f"[{self.label}] " if self.label else ""
    print(f"{prefix}step {step}/{self.total} | {rate:.2f}s/step | elapsed {_duration(elapsed)} | "
          f"ETA {_duration(rate * (self.total - step))} | {shown}", file=self.stream or sys.stdout,
          flush=True)
