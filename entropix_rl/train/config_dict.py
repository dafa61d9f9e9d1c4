"""The binary's edge: ml-collections `ConfigDict`s to and from the typed `ExperimentConfig`.

A config file starts from `default_config()`, which holds every field of every section with the
dataclasses' defaults, and sets only what differs; so every key of every config can be set from
the command line (`--config.rl.steps=3`), and a field added to a dataclass reaches every config
at once:

    config = default_config()
    config.rl.steps = 120
    config.loss.name = "clip_cov"

`typed(config)` then checks the whole `ConfigDict` once: unknown keys are rejected with the
known ones listed, every value's type is checked, and each section's dataclass checks its
ranges, so an error names the field and the allowed values. `as_config_dict` is the inverse
(what `run_info.json` records). `apply_overrides` sets dotted keys, as sweeps write them.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import numbers
import types
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from entropix_rl import interventions, sampling
from entropix_rl.checks import check_bool, check_choice, check_number
from entropix_rl.models import ModelConfig, families
from entropix_rl.train.config import ConfigError, ExperimentConfig, ModelSection

# The sampler fields a config sets; the others come from the tokenizer and the data section.
SAMPLER_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "greedy",
    "max_decode_rows",
    "decode_segment",
    "refill",
)
# ModelConfig fields a config file cannot set (rope scaling comes from a checkpoint).
_NOT_IN_FILES = ("rope_scaling",)


def default_config() -> ml_collections.ConfigDict:
  """Every field of every section, at the dataclasses' defaults (module docstring)."""
  return as_config_dict(ExperimentConfig())


def as_config_dict(config: ExperimentConfig) -> ml_collections.ConfigDict:
  """`config` as a config file holds it: fields that may be None become typed placeholders,
  so the command line can still set them."""
  out = ml_collections.ConfigDict()
  for field in dataclasses.fields(ExperimentConfig):
    value = getattr(config, field.name)
    if field.name == "model":
      out.model = _model_section(value)
    elif field.name == "sampler":
      out.sampler = ml_collections.ConfigDict({k: getattr(value, k) for k in SAMPLER_KEYS})
    elif field.name == "loss":
      out.loss = value.to_config_dict()
    elif dataclasses.is_dataclass(value):
      out[field.name] = _section(value)
    else:
      out[field.name] = value
  return out


def typed(config: ml_collections.ConfigDict | Mapping[str, Any]) -> ExperimentConfig:
  """Validates a whole config (module docstring) and returns the typed `ExperimentConfig`.

  Raises:
    ConfigError: naming the field and its allowed values (or the known keys).
  """
  try:
    return _build(ExperimentConfig, "", _as_dict(config, "config"))
  except ValueError as err:
    raise ConfigError(str(err)) from None


def flat(config: ExperimentConfig) -> dict[str, Any]:
  """`config` as dotted keys and JSON values (`as_config_dict`'s leaves; a task's `kwargs` is one
  value)."""
  out: dict[str, Any] = {}

  def walk(prefix: str, value: Any) -> None:
    if isinstance(value, dict) and not prefix.endswith("kwargs"):
      for key in sorted(value):
        walk(f"{prefix}.{key}" if prefix else key, value[key])
    else:
      out[prefix] = json.loads(json.dumps(value, default=str))

  walk("", as_config_dict(config).to_dict())
  return out


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


def _section(value: Any) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict()
  hints = typing.get_type_hints(type(value))
  for field in dataclasses.fields(value):
    item = getattr(value, field.name)
    if dataclasses.is_dataclass(item):
      out[field.name] = _section(item)
    elif item is None:
      out[field.name] = config_dict.placeholder(_base_type(hints[field.name]))
    else:
      out[field.name] = dict(item) if isinstance(item, Mapping) else item
  return out


def _own_model_fields() -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(ModelSection) if f.name != "architecture")


def _architecture_fields() -> dict[str, dataclasses.Field]:
  own = _own_model_fields()
  return {
      f.name: f
      for f in dataclasses.fields(ModelConfig)
      if f.name not in own and f.name not in _NOT_IN_FILES
  }


def _model_section(model: ModelSection) -> ml_collections.ConfigDict:
  """`config.model`: its own fields, then every architecture field (the given value, else the
  `ModelConfig` default, else a typed placeholder)."""
  out = ml_collections.ConfigDict({k: getattr(model, k) for k in _own_model_fields()})
  hints = typing.get_type_hints(ModelConfig)
  for name, field in _architecture_fields().items():
    default = None if field.default is dataclasses.MISSING else field.default
    value = model.architecture.get(name, default)
    out[name] = config_dict.placeholder(_base_type(hints[name])) if value is None else value
  return out


def _as_dict(value: Any, path: str) -> dict[str, Any]:
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  if isinstance(value, Mapping):
    return dict(value)
  raise ValueError(f"{path or 'config'} must be a section (ConfigDict), got {value!r}")


def _join(path: str, name: str) -> str:
  return f"{path}.{name}" if path else name


def _check_keys(
    path: str, values: Mapping[str, Any], known: tuple[str, ...], required: tuple[str, ...]
) -> None:
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(
        f"unknown key(s) {[_join(path, k) for k in unknown]}; known keys of "
        f"{path or 'the config'}: {sorted(known)}"
    )
  missing = [k for k in required if k not in values]
  if missing:
    raise ValueError(
        f"the config lacks {[_join(path, k) for k in missing]}; start config files from "
        "entropix_rl.train.config_dict.default_config(), which holds every field"
    )


def _base_type(hint: Any) -> Any:
  """`int` for `int | None`, and so on."""
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint


def _check_type(path: str, value: Any, hint: Any) -> None:
  """Raises ValueError naming `path` unless `value` has the annotated type."""
  optional = type(None) in typing.get_args(hint)
  if value is None:
    if optional:
      return
    raise ValueError(f"{path}=None; allowed: a value of type {_type_name(hint)}")
  base = _base_type(hint)
  origin = typing.get_origin(base)
  if base is bool:
    check_bool(path, value)
  elif base is int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise ValueError(f"{path}={value!r}; allowed: an int")
  elif base is float:
    check_number(path, value, allowed="a number")
  elif base is str:
    if not isinstance(value, str):
      raise ValueError(f"{path}={value!r}; allowed: a string")
  elif origin is tuple:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
      raise ValueError(f"{path}={value!r}; allowed: a tuple of ints")
  elif origin in (Mapping, dict) or base is Mapping:
    if not isinstance(value, Mapping):
      raise ValueError(f"{path}={value!r}; allowed: a mapping")


def _type_name(hint: Any) -> str:
  return getattr(_base_type(hint), "__name__", str(hint))


def _build(cls: type, path: str, values: dict[str, Any]) -> Any:
  """`cls(**values)` after checking keys (all required) and types, section by section (the
  dataclasses check the ranges)."""
  fields = tuple(f.name for f in dataclasses.fields(cls))
  _check_keys(path, values, fields, required=fields)
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, item in values.items():
    where = _join(path, name)
    base = _base_type(hints[name])
    if where in _SPECIAL:
      kwargs[name] = _SPECIAL[where](item)
    elif dataclasses.is_dataclass(base):
      kwargs[name] = _build(base, where, _as_dict(item, where))
    else:
      _check_type(where, item, hints[name])
      kwargs[name] = tuple(item) if typing.get_origin(base) is tuple else item
  try:
    return cls(**kwargs)
  except ValueError as err:  # a section used at two paths (optimizer) names its default one
    message, own = str(err), path.rpartition(".")[2] + "."
    if "." in path and f"{path}." not in message and message.startswith(own):
      raise ValueError(f"{path}.{message[len(own):]}") from None
    raise


def _model(value: Any) -> ModelSection:
  values = _as_dict(value, "model")
  own = _own_model_fields()
  architecture_fields = _architecture_fields()
  _check_keys("model", values, own + tuple(sorted(architecture_fields)), required=own)
  hints = typing.get_type_hints(ModelConfig)
  architecture = {}
  for key in sorted(set(values) - set(own)):
    if values[key] is None:  # an unset placeholder: the ModelConfig default or family flag
      continue
    _check_type(f"model.{key}", values[key], hints[key])
    architecture[key] = values[key]
  if "model_type" in architecture:
    check_choice("model.model_type", architecture["model_type"], families.MODEL_TYPES)
  return _build(
      ModelSection, "model", {**{k: values[k] for k in own}, "architecture": architecture}
  )


def _sampler(value: Any) -> sampling.SamplerConfig:
  values = _as_dict(value, "sampler")
  _check_keys("sampler", values, SAMPLER_KEYS, required=SAMPLER_KEYS)
  hints = typing.get_type_hints(sampling.SamplerConfig)
  for key, item in values.items():
    _check_type(f"sampler.{key}", item, hints[key])
  return sampling.SamplerConfig(**values)


_SPECIAL = {"model": _model, "sampler": _sampler, "loss": interventions.resolve_loss_config}
