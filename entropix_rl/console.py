"""What the binaries show on the console: absl logging, with `--verbosity` respected, and
`Progress`, the line a long loop logs every few steps.

Without `--verbosity` on the command line, INFO lines come only from entropix_rl and the
binaries themselves; libraries show WARNING and above (Orbax logs every checkpoint save at
INFO). With `--verbosity=N`, absl's own rule applies to every logger.
"""

from __future__ import annotations

from collections.abc import Mapping
import logging as std_logging
import time

from absl import flags, logging

_OWN = ("/entropix_rl/", "/experiments/", "/launch/", "/benchmarks/")


class _OwnInfoOnly(std_logging.Filter):
  """Keeps WARNING and above from everyone, INFO and below from this project's files."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or any(p in record.pathname for p in _OWN)


def configure() -> None:
  """Call at the start of a binary's `main` (after flags are parsed)."""
  if flags.FLAGS["verbosity"].present:
    return
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_OwnInfoOnly())


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """One INFO log line every `every` steps: step, step time, elapsed time, ETA and a few chosen
  metrics under their full names.

  The first step of a run (or of a resumed run) compiles the jitted programs, so the step time
  and the ETA are measured from the end of that step: `elapsed` counts everything, the rate
  only the steps after the first.
  """

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
    self._first: tuple[int, float] | None = None  # (step, time) at the end of the first step

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    """Reports after finishing `step` (1-based count of steps done)."""
    now = time.perf_counter()
    if self._first is None:
      self._first = (step, now)
    if not self.enabled or (step % self.every and step != self.total):
      return
    first_step, first_time = self._first
    if step > first_step:
      rate = (now - first_time) / (step - first_step)
      timing = f"{rate:.2f}s/step | ETA {_duration(rate * (self.total - step))}"
    else:
      timing = f"first step {now - self._t0:.1f}s (compilation included) | ETA after the next step"
    shown = " ".join(f"{k}={metrics[k]:.4g}" for k in self.keys if k in metrics)
    prefix = f"[{self.label}] " if self.label else ""
    logging.info(
        "%sstep %d/%d | %s | elapsed %s | %s",
        prefix,
        step,
        self.total,
        timing,
        _duration(now - self._t0),
        shown,
    )
