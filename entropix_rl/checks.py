"""Value checks for config fields: each raises ValueError naming the field and the allowed values.

Every config dataclass validates its fields with these in `__post_init__` (or `validate`), so a
bad value fails at start-up with a message such as `rl.group_size=0; allowed: an int >= 1`.
"""

from __future__ import annotations

import numbers
from typing import Any


def check_choice(path: str, value: Any, allowed: tuple) -> None:
  """Raises ValueError unless `value` is one of `allowed`."""
  if value not in allowed:
    raise ValueError(f"{path}={value!r}; allowed: {allowed}")


def check_int(path: str, value: Any, minimum: int = 1, note: str = "") -> None:
  """Raises ValueError unless `value` is an int (not a bool) >= `minimum`; `note` explains a
  special value, e.g. " (0 = never)"."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{path}={value!r}; allowed: an int >= {minimum}{note}")


def check_number(
    path: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allowed: str = "",
) -> None:
  """Raises ValueError unless `value` is a real number in the stated interval."""
  bad = isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value
  if not bad and low is not None:
    bad = value <= low if low_open else value < low
  if not bad and high is not None:
    bad = value >= high if high_open else value > high
  if bad:
    if not allowed:
      left = "(" if low_open else "["
      right = ")" if high_open else "]"
      allowed = (
          f"a number in {left}{'-inf' if low is None else low}, "
          f"{'inf' if high is None else high}{right}"
      )
    raise ValueError(f"{path}={value!r}; allowed: {allowed}")


def check_ratio(path: str, value: Any) -> None:
  """A selection ratio: a fraction in (0, 1] (0.002, not 0.2 "percent")."""
  check_number(
      path,
      value,
      low=0.0,
      high=1.0,
      low_open=True,
      allowed="a fraction in (0, 1] (0.002 means 0.2%)",
  )


def check_bool(path: str, value: Any) -> None:
  """Raises ValueError unless `value` is True or False."""
  if not isinstance(value, bool):
    raise ValueError(f"{path}={value!r}; allowed: True or False")
