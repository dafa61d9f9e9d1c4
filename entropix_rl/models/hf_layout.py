"""How a Hugging Face tensor becomes one of our params: layouts and their conversions.

torch `Linear` weights are stored `[out, in]`; our params keep the input axis first and split
the attention projections by head, so each layout is one rule:

| layout | Hugging Face | ours |
| --- | --- | --- |
| SAME | any | the same array (norms, the embedding) |
| TRANSPOSED | `[out, in]` | `[in, out]` (MLP, lm_head) |
| HEADS_IN | `[heads·Dh, D]` | `[D, heads, Dh]` (q, k, v) |
| HEADS_OUT | `[D, H·Dh]` | `[H, Dh, D]` (o) |
| PER_HEAD | `[heads·Dh]` | `[heads, Dh]` (q/k/v biases) |
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np


class Layout(enum.Enum):
  """How a stored tensor maps onto our param (the table in the module docstring)."""

  SAME = "same"
  TRANSPOSED = "transposed"
  HEADS_IN = "heads_in"
  HEADS_OUT = "heads_out"
  PER_HEAD = "per_head"


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One Hugging Face tensor of a family's table.

  Attributes:
    param: our param name (a key of the param tree, or of `params["layers"]`).
    shape: the stored (Hugging Face) shape, checked against the file headers.
    layout: how the stored array maps onto our param.
  """

  param: str
  shape: tuple[int, ...]
  layout: Layout = Layout.SAME


def to_ours(layout: Layout, x: np.ndarray, head_dim: int) -> np.ndarray:
  """One stored array in our layout (per layer: without the leading `[L]` axis)."""
  if layout is Layout.TRANSPOSED:
    return x.T
  if layout is Layout.HEADS_IN:
    return x.T.reshape(x.shape[1], -1, head_dim)
  if layout is Layout.HEADS_OUT:
    return x.T.reshape(-1, head_dim, x.shape[0])
  if layout is Layout.PER_HEAD:
    return x.reshape(-1, head_dim)
  return x


def to_hf(layout: Layout, x: np.ndarray) -> np.ndarray:
  """The inverse of `to_ours`."""
  if layout is Layout.TRANSPOSED:
    return x.T
  if layout is Layout.HEADS_IN:
    return x.reshape(x.shape[0], -1).T
  if layout is Layout.HEADS_OUT:
    return x.reshape(-1, x.shape[-1]).T
  if layout is Layout.PER_HEAD:
    return x.reshape(-1)
  return x


def read_block(stored: Any, layout: Layout, box: tuple[slice, ...], head_dim: int) -> np.ndarray:
  """The block `box` (slices of our param) of a stored tensor, reading only the stored rows
  and columns it needs.

  Args:
    stored: a safetensors slice (`safe_open(...).get_slice(name)`), indexable like an array.
    layout: how the stored tensor maps onto our param.
    box: one slice with explicit start and stop per axis of our param (per layer: without
      the `[L]` axis).
    head_dim: Dh, to split the stored head axes.
  """
  dh = head_dim
  if layout is Layout.HEADS_IN:  # ours [D, heads, Dh] = hf[heads·Dh, D].T
    d_sl, h_sl, e_sl = box
    block = stored[h_sl.start * dh : h_sl.stop * dh, d_sl].T
    return block.reshape(d_sl.stop - d_sl.start, h_sl.stop - h_sl.start, dh)[:, :, e_sl]
  if layout is Layout.HEADS_OUT:  # ours [H, Dh, D] = hf[D, H·Dh].T
    h_sl, e_sl, d_sl = box
    block = stored[d_sl, h_sl.start * dh : h_sl.stop * dh].T
    return block.reshape(h_sl.stop - h_sl.start, dh, d_sl.stop - d_sl.start)[:, e_sl, :]
  if layout is Layout.PER_HEAD:  # ours [heads, Dh] = hf[heads·Dh]
    h_sl, e_sl = box
    return stored[h_sl.start * dh : h_sl.stop * dh].reshape(-1, dh)[:, e_sl]
  if layout is Layout.TRANSPOSED:  # ours = hf.T
    return stored[box[1], box[0]].T
  return stored[box]
