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
