"""What the binaries show on the console: absl logging, with `--verbosity` respected.

Without `--verbosity` on the command line, INFO lines come only from entropix_rl and the
binaries themselves; libraries show WARNING and above (Orbax logs every checkpoint save at
INFO). With `--verbosity=N`, absl's own rule applies to every logger.
"""

from __future__ import annotations

import logging as std_logging

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
