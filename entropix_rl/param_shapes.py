"""Param shapes by name, to tell a checkpoint from another model config before restoring it.

A param's name is its pytree path joined with "/" (`params/layers/q`, `opt_state/0/mu/embed`),
so that Orbax metadata trees (nested dicts and lists) and the pytrees they were saved from
(dataclasses, namedtuples, dicts) give the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def shapes_by_name(tree: Any) -> dict[str, tuple[int, ...]]:
  """`{name: shape}` of every leaf of `tree` that has a shape (arrays, ShapeDtypeStructs,
  Orbax array metadata), in flattening order."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
      "/".join(_key_name(k) for k in path): tuple(leaf.shape)
      for path, leaf in leaves
      if getattr(leaf, "shape", None) is not None
  }


def check_same_shapes(
    where: str,
    stored: Mapping[str, tuple[int, ...]],
    wanted: Mapping[str, tuple[int, ...]],
    *,
    same_names: bool,
) -> None:
  """Raises if a param has one shape in a checkpoint and another in the model config.

  Args:
    where: names the checkpoint in the error (e.g. `checkpoint DIR step 7`).
    stored: the checkpoint's `{name: shape}`.
    wanted: the model config's `{name: shape}`; mismatches are reported in its order.
    same_names: also raise when a name is in only one of the two.

  Raises:
    ValueError: naming the first mismatched param and both shapes, and how many more differ.
  """
  problems = [
      f"param {name!r} has shape {stored[name]} in the checkpoint but {shape} in the "
      "model config"
      for name, shape in wanted.items()
      if name in stored and tuple(stored[name]) != tuple(shape)
  ]
  if same_names:
    problems += [
        f"param {name!r} is in the model config but not in the checkpoint"
        for name in wanted
        if name not in stored
    ]
    problems += [
        f"param {name!r} is in the checkpoint but not in the model config"
        for name in stored
        if name not in wanted
    ]
  if problems:
    more = f" (and {len(problems) - 1} more params differ)" if len(problems) > 1 else ""
    raise ValueError(f"{where}: {problems[0]}{more}; the checkpoint is from another model config")
