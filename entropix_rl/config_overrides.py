"""Dotted-key overrides of ml_collections configs (`{"loss.clip_cov.ratio": 0.02}`), as the
sweeps and `--config.k=v` flags write them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
                    ) -> ml_collections.ConfigDict:
  """Sets each dotted key of `overrides` on `config` in place and returns it.

  Raises:
    KeyError: naming the key, when a parent section does not exist.
  """
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
      if part not in node:
        raise KeyError(f"override {key!r}: the config has no section {'.'.join(parents[:i + 1])!r}")
      node = node[part]
    node[leaf] = value
  return config
