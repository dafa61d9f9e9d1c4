"""Host-side padding of token rows (NumPy, outside jit): left-padded rows and the power-of-two
widths that let a few compiled programs serve every batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def prompt_bucket(width: int, minimum: int) -> int:
  """The smallest power of two >= max(width, minimum)."""
  size = max(int(width), int(minimum), 1)
  return 1 << (size - 1).bit_length()


def left_pad(
    rows: Sequence[Sequence[int]], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to `length`: returns `tokens [B, length]` int32 and `mask` bool.

  Raises:
    ValueError: for a row longer than `length`.
  """
  tokens = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, row in enumerate(rows):
    if len(row) > length:
      raise ValueError(f"sequence {i} has {len(row)} tokens, more than the padded length {length}")
    if len(row):
      tokens[i, length - len(row) :] = row
      mask[i, length - len(row) :] = True
  return tokens, mask
