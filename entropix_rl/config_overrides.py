"""Dotted-key overrides of ml_collections configs (`{"loss.clip_cov.ratio": 0.02}`), as the
sweeps and `--config.k=v` flags write them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """Sets each dotted key of `overrides` on `config` in place (`update_from_flattened_dict`,
  with ConfigDict's type checks) and returns it.

  Raises:
    KeyError: naming the key, when a parent section does not exist (or, on a locked config,
      the key itself).
  """
  config.update_from_flattened_dict(dict(overrides))
  return config
