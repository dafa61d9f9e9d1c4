"""The loss configuration: `default_loss_config()` (ConfigDict for config files) and its
resolved, validated, hashable form `LossConfig` (a static argument of jitted functions).

Field names follow the papers and verl (docs/interventions.md). Top-level fields
configure the surrogate; every registered intervention with constants owns one section
(`loss.clip_cov`, `loss.kl_cov`, ...), whose defaults come from its dataclass.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

from entropix_rl.checks import check_choice, check_number
from entropix_rl.interventions import registry
from entropix_rl.interventions.aggregation import AGG_MODES

SELECTION_SCOPES = ("batch", "microbatch")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Resolved loss settings (frozen, hashable).

  Attributes:
    name: the surrogate/selector, a registered surrogate (`ppo`, `clip_cov`, `kl_cov`,
      `high_entropy_tokens`).
    agg: loss aggregation, one of `AGG_MODES`.
    clip_eps_low: PPO lower clip ε_l; the ratio is clipped below at `1 − ε_l`.
    clip_eps_high: PPO upper clip ε_h (clip-higher, DAPO: 0.28).
    dual_clip_c: dual-clip constant c > 1 for A < 0, or None (off).
    selection_scope: `batch` (selection statistics over the whole batch passed in) or
      `microbatch` (per consecutive chunk of `microbatch_size` sequences, as verl).
    microbatch_size: sequences per chunk for the `microbatch` scope.
    loss_scale_factor: the constant T of `seq-mean-token-sum-norm` (verl's name), or None for
      the padded completion length.
    sections: `(name, section dataclass)` for every registered intervention with constants;
      missing ones are filled with defaults. Read them as attributes (`cfg.kl_cov.coef`).
  """

  name: str = "ppo"
  agg: str = "token-mean"
  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.2
  dual_clip_c: float | None = None
  selection_scope: str = "batch"
  microbatch_size: int | None = None
  loss_scale_factor: int | None = None
  sections: tuple[tuple[str, Any], ...] = ()

  def __post_init__(self):
    known = registry.sections()
    given = dict(self.sections)
    unknown = sorted(set(given) - set(known))
    if unknown:
      raise ValueError(
          f"unknown loss sections {['loss.' + k for k in unknown]}; " f"allowed: {tuple(known)}"
      )
    for key, cls in known.items():
      if not isinstance(given.setdefault(key, cls()), cls):
        raise ValueError(f"loss.{key} must be a {cls.__name__}, got {type(given[key]).__name__}")
    object.__setattr__(self, "sections", tuple((key, given[key]) for key in known))
    self._validate()

  def _validate(self) -> None:
    check_choice("loss.name", self.name, registry.names("surrogate"))
    check_choice("loss.agg", self.agg, AGG_MODES)
    check_number("loss.clip_eps_low", self.clip_eps_low, low=0.0, high=1.0)
    check_number("loss.clip_eps_high", self.clip_eps_high, low=0.0)
    if self.dual_clip_c is not None:
      check_number(
          "loss.dual_clip_c",
          self.dual_clip_c,
          low=1.0,
          low_open=True,
          allowed="None (off) or a number > 1",
      )
    check_choice("loss.selection_scope", self.selection_scope, SELECTION_SCOPES)
    if self.microbatch_size is not None and (
        isinstance(self.microbatch_size, bool)
        or not isinstance(self.microbatch_size, int)
        or self.microbatch_size < 1
    ):
      raise ValueError(
          f"loss.microbatch_size={self.microbatch_size!r}; allowed: None or an "
          "int >= 1 (sequences per micro-batch)"
      )
    if self.loss_scale_factor is not None and (
        isinstance(self.loss_scale_factor, bool)
        or not isinstance(self.loss_scale_factor, int)
        or self.loss_scale_factor < 1
    ):
      raise ValueError(
          f"loss.loss_scale_factor={self.loss_scale_factor!r}; allowed: None or an "
          "int >= 1 (tokens)"
      )
    if self.selection_scope == "microbatch" and self.microbatch_size is None:
      raise ValueError(
          "loss.selection_scope='microbatch' needs loss.microbatch_size (sequences "
          "per micro-batch); allowed: an int >= 1"
      )
    for key, section in self.sections:
      section.validate(f"loss.{key}")

  def to_config_dict(self) -> ml_collections.ConfigDict:
    """`config.loss` as a config file holds it: the top-level fields (None ones as typed
    placeholders, so the command line can set them) and one section per intervention."""
    out = ml_collections.ConfigDict()
    for field in _TOP_LEVEL:
      value = getattr(self, field)
      out[field] = config_dict.placeholder(_OPTIONAL[field]) if value is None else value
    for key, section in self.sections:
      out[key] = ml_collections.ConfigDict(dataclasses.asdict(section))
    return out

  def __getattr__(self, name: str) -> Any:
    if not name.startswith("__"):
      for key, section in self.__dict__.get("sections", ()):
        if key == name:
          return section
    raise AttributeError(f"LossConfig has no field or section {name!r}")


_TOP_LEVEL = tuple(f.name for f in dataclasses.fields(LossConfig) if f.name != "sections")
_OPTIONAL = {"dual_clip_c": float, "microbatch_size": int, "loss_scale_factor": int}


def default_loss_config() -> ml_collections.ConfigDict:
  """`config.loss` defaults: top-level fields plus one section per registered intervention."""
  return LossConfig().to_config_dict()


def _as_dict(value: Any, path: str) -> dict:
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  if isinstance(value, Mapping):
    return dict(value)
  raise ValueError(f"{path} must be a ConfigDict or mapping, got {type(value).__name__}")


def resolve_loss_config(cfg: Any) -> LossConfig:
  """Validates a `config.loss` ConfigDict (or mapping) once and returns the `LossConfig`.

  A `LossConfig` passes through unchanged. Raises ValueError naming the offending field and
  its allowed values, including for unknown fields.
  """
  if isinstance(cfg, LossConfig):
    return cfg
  values = _as_dict(cfg, "loss")
  known_sections = registry.sections()
  unknown = sorted(set(values) - set(_TOP_LEVEL) - set(known_sections))
  if unknown:
    raise ValueError(
        f"unknown loss fields {['loss.' + k for k in unknown]}; allowed: "
        f"{_TOP_LEVEL + tuple(known_sections)}"
    )
  sections = []
  for key, cls in known_sections.items():
    if key not in values:
      continue
    section = _as_dict(values.pop(key), f"loss.{key}")
    fields = tuple(f.name for f in dataclasses.fields(cls))
    extra = sorted(set(section) - set(fields))
    if extra:
      raise ValueError(f"unknown fields {[f'loss.{key}.{k}' for k in extra]}; allowed: {fields}")
    sections.append((key, cls(**section)))
  return LossConfig(**values, sections=tuple(sections))
