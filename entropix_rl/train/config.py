"""The typed experiment config: what a config file's `ConfigDict` must hold, checked once.

`ExperimentConfig.from_config_dict(config)` is the binary's edge: it rejects unknown keys
(listing the known ones), requires every key the code reads (so every field of every shipped
config can be set from the command line), checks each value's type and range, and returns
frozen dataclasses. Past it no code reads a `ConfigDict`. Cross-section checks (context length,
divisibility of batches over the mesh) follow in `experiment.resolve`.

Config files build their sections with `section(...)` from these dataclasses, so a new field
reaches every shipped config at once:

    config.checkpoint = section(CheckpointConfig(save_every=100, keep=2))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import numbers
import types
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from entropix_rl import advantages, data, interventions, sampling, tasks
from entropix_rl.checks import check_bool, check_choice, check_int, check_number
from entropix_rl.models import ModelConfig, families
from entropix_rl.models.attention import ATTENTION_IMPLS
from entropix_rl.train.evaluation import EvalConfig
from entropix_rl.train.optim import OptimizerConfig
from entropix_rl.train.wandb_sink import WandbConfig

MODEL_INITS = ("random", "checkpoint")
TOKENIZER_KINDS = ("char", "hf")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """name: a task of `tasks.TASKS`; kwargs: its constructor's keyword arguments."""

  name: str = "decomposition"
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    check_choice("task.name", self.name, tuple(tasks.TASKS))
    try:
      tasks.get_task(self.name, **self.kwargs)
    except (TypeError, ValueError) as err:
      raise ValueError(f"task.kwargs={dict(self.kwargs)!r} for task {self.name!r}: {err}") from None


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """kind: "char" (the task's alphabet) or "hf" (a Hugging Face tokenizer at `path`)."""

  kind: str = "char"
  path: str = ""

  def __post_init__(self):
    check_choice("tokenizer.kind", self.kind, TOKENIZER_KINDS)
    if self.kind == "hf" and not self.path:
      raise ValueError("tokenizer.path must name a Hugging Face tokenizer with tokenizer.kind='hf'")


@dataclasses.dataclass(frozen=True)
class ModelSection:
  """`config.model`: where the weights come from, and the architecture for `init="random"`.

  Attributes:
    init: "random" (build `architecture`) or "checkpoint" (a Hugging Face directory; the
      architecture comes from its config.json).
    checkpoint: that directory (local or gs://).
    param_dtype, compute_dtype, attention_impl, attention_block_q, attention_block_k: how to
      run the model (also applied to a checkpoint).
    architecture: the other `ModelConfig` fields given in the section (the model family
      `model_type`, its decoder flags `qkv_bias`, `qk_norm`, `sliding_window`, the sizes);
      a decoder flag left out takes the family's value.
  """

  init: str = "random"
  checkpoint: str = ""
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  attention_impl: str = "auto"
  attention_block_q: int = 512
  attention_block_k: int = 512
  architecture: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    check_choice("model.init", self.init, MODEL_INITS)
    if self.init == "checkpoint" and not self.checkpoint:
      raise ValueError(
          "model.checkpoint must name a Hugging Face checkpoint directory when "
          "model.init='checkpoint'"
      )
    check_choice("model.param_dtype", self.param_dtype, DTYPES)
    check_choice("model.compute_dtype", self.compute_dtype, DTYPES)
    check_choice("model.attention_impl", self.attention_impl, ATTENTION_IMPLS)
    check_int("model.attention_block_q", self.attention_block_q)
    check_int("model.attention_block_k", self.attention_block_k)

  @property
  def runtime(self) -> dict[str, Any]:
    """The fields that no checkpoint's config.json holds (how to run, not what to run)."""
    return {
        name: getattr(self, name)
        for name in ("attention_impl", "attention_block_q", "attention_block_k")
    }


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """The supervised warm start (`steps` 0 = none)."""

  steps: int = 0
  batch_size: int = 256
  log_every: int = 50
  shared_dir: str = ""
  micro_batch_size: int = 0
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)

  def __post_init__(self):
    check_int("sft.steps", self.steps, 0)
    check_int("sft.batch_size", self.batch_size)
    check_int("sft.log_every", self.log_every)
    check_int("sft.micro_batch_size", self.micro_batch_size, 0, " (0 = no splitting)")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """`config.rl`: the RL loop (the update's own fields become `rl_step.RLUpdateConfig`)."""

  steps: int = 300
  prompts_per_step: int = 32
  group_size: int = 8
  ppo_epochs: int = 1
  num_minibatches: int = 4
  advantage: str = "grpo"
  dynamic_sampling: bool = False
  max_gen_batches: int = 10
  use_reference: bool = True
  measure_dynamics: bool = True
  token_chunk: int = 4096
  remat: bool = False
  micro_batch_size: int = 0
  logprob_micro_batch_size: int = 0
  feature_chunk: int = 256
  completion_buckets: int = 1
  old_logp_from_rollout: bool = False
  max_skipped_updates: int = 3
  step_delimiter: str = ""
  cluster_by: str = "exact_string"

  def __post_init__(self):
    check_int("rl.steps", self.steps, 0)
    for name in (
        "prompts_per_step",
        "group_size",
        "ppo_epochs",
        "num_minibatches",
        "max_gen_batches",
        "token_chunk",
        "feature_chunk",
        "max_skipped_updates",
    ):
      check_int(f"rl.{name}", getattr(self, name))
    check_int(
        "rl.completion_buckets",
        self.completion_buckets,
        1,
        " (1 = always the full sampler.max_new_tokens)",
    )
    check_choice("rl.advantage", self.advantage, tuple(advantages.ESTIMATORS))
    check_choice("rl.cluster_by", self.cluster_by, tasks.ANSWER_KEY_MODES)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """save_every: RL steps between saves (and at the end, and on preemption); keep: the last K."""

  save_every: int = 100
  keep: int = 2

  def __post_init__(self):
    check_int("checkpoint.save_every", self.save_every)
    check_int("checkpoint.keep", self.keep)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
  """Where metrics go besides `metrics.jsonl` (`train.metrics`).

  Attributes:
    console_every: RL steps between console lines.
    tensorboard: also write TensorBoard event files (`workdir/tensorboard/`).
    samples_every: RL steps between tables of sample completions with their rewards
      (`workdir/tables/samples.jsonl`, TensorBoard text, a W&B table); 0 = never.
    num_samples: rows per table (the first rollout rows of the step, whole groups first).
    wandb: the Weights & Biases sink (`train.wandb_sink.WandbConfig`).
  """

  console_every: int = 25
  tensorboard: bool = True
  samples_every: int = 25
  num_samples: int = 8
  wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)

  def __post_init__(self):
    check_int("logging.console_every", self.console_every)
    check_int("logging.samples_every", self.samples_every, minimum=0, note=" (0 = never)")
    check_int("logging.num_samples", self.num_samples)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh sizes over (data, fsdp, tensor); one may be -1 ("the rest")."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    for name in ("data", "fsdp", "tensor"):
      if getattr(self, name) == 0 or getattr(self, name) < -1:
        raise ValueError(
            f"mesh.{name}={getattr(self, name)}; allowed: an int >= 1, or -1 (the "
            "rest of the devices)"
        )
    if [self.data, self.fsdp, self.tensor].count(-1) > 1:
      raise ValueError(
          f"mesh: at most one of data, fsdp, tensor may be -1; got data={self.data}, "
          f"fsdp={self.fsdp}, tensor={self.tensor}"
      )

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """`jax.distributed.initialize` arguments; unset ("", 0, -1) ones are discovered by JAX (TPU)."""

  enabled: bool = False
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1

  def __post_init__(self):
    check_int("distributed.num_processes", self.num_processes, 0, " (0 = discovered)")
    check_int("distributed.process_id", self.process_id, -1, " (-1 = discovered)")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Every section of an experiment config, typed and validated."""

  seed: int
  method: str
  task: TaskConfig
  tokenizer: TokenizerConfig
  data: data.DataConfig
  model: ModelSection
  sampler: sampling.SamplerConfig
  sft: SFTConfig
  rl: RLConfig
  optimizer: OptimizerConfig
  loss: Any  # interventions.LossConfig
  eval: EvalConfig
  checkpoint: CheckpointConfig
  logging: LoggingConfig
  mesh: MeshConfig
  distributed: DistributedConfig
  source: str = dataclasses.field(default="{}", compare=False)  # the config as JSON

  @classmethod
  def from_config_dict(cls, config: ml_collections.ConfigDict) -> ExperimentConfig:
    """Validates `config` (module docstring); errors name the field and the allowed values."""
    values = _as_dict(config, "config")
    _check_keys("", values, _SECTIONS, required=_SECTIONS)
    _check_type("seed", values["seed"], int)
    _check_type("method", values["method"], str)
    sections = {name: build(values[name]) for name, build in _BUILDERS.items()}
    return cls(
        seed=values["seed"],
        method=values["method"],
        **sections,
        source=config.to_json_best_effort() if hasattr(config, "to_json_best_effort") else "{}",
    )


def section(value: Any) -> ml_collections.ConfigDict:
  """A config-file section with every field of the dataclass `value`; fields that may be None
  become typed placeholders, so the command line can still set them."""
  out = ml_collections.ConfigDict()
  hints = typing.get_type_hints(type(value))
  for field in dataclasses.fields(value):
    item = getattr(value, field.name)
    if dataclasses.is_dataclass(item):
      out[field.name] = section(item)
    elif item is None:
      out[field.name] = config_dict.placeholder(_base_type(hints[field.name]))
    else:
      out[field.name] = dict(item) if isinstance(item, Mapping) else item
  return out


def _as_dict(value: Any, path: str) -> dict[str, Any]:
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  if isinstance(value, Mapping):
    return dict(value)
  raise ValueError(f"{path or 'config'} must be a section (ConfigDict), got {value!r}")


def _check_keys(
    path: str, values: Mapping[str, Any], known: tuple[str, ...], required: tuple[str, ...]
) -> None:
  prefix = f"{path}." if path else ""
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(
        f"unknown key(s) {[prefix + k for k in unknown]}; known keys of "
        f"{path or 'the config'}: {sorted(known)}"
    )
  missing = [k for k in required if k not in values]
  if missing:
    raise ValueError(
        f"the config lacks {[prefix + k for k in missing]}; every config must "
        f"define them (build sections with entropix_rl.train.config.section)"
    )


def _base_type(hint: Any) -> type:
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


def _typed(cls: type, path: str, value: Any, **nested: Callable[[Any], Any]) -> Any:
  """`cls(**section)` after checking keys (all required) and types (the dataclass checks the
  ranges); `nested` builds sub-sections by field name."""
  values = _as_dict(value, path)
  fields = tuple(f.name for f in dataclasses.fields(cls))
  _check_keys(path, values, fields, required=fields)
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, item in values.items():
    if name in nested:
      kwargs[name] = nested[name](item)
      continue
    _check_type(f"{path}.{name}", item, hints[name])
    kwargs[name] = tuple(item) if typing.get_origin(_base_type(hints[name])) is tuple else item
  return cls(**kwargs)


def _builder(cls: type, path: str, **nested: Callable[[Any], Any]) -> Callable[[Any], Any]:
  return lambda value: _typed(cls, path, value, **nested)


def _optimizer(path: str) -> Any:
  """Builds an `OptimizerConfig` section; its own errors say "optimizer.", so they are renamed
  to `path`."""

  def build(value: Any) -> OptimizerConfig:
    try:
      return _typed(OptimizerConfig, path, value)
    except ValueError as err:
      raise ValueError(
          str(err).replace("optimizer.", f"{path}.") if path != "optimizer" else str(err)
      ) from None

  return build


def _model(value: Any) -> ModelSection:
  values = _as_dict(value, "model")
  own = [f.name for f in dataclasses.fields(ModelSection) if f.name != "architecture"]
  architecture_fields = {f.name for f in dataclasses.fields(ModelConfig)} - set(own)
  _check_keys("model", values, tuple(own) + tuple(sorted(architecture_fields)), required=tuple(own))
  hints = typing.get_type_hints(ModelConfig)
  architecture = {}
  for key in sorted(set(values) - set(own)):
    if key != "rope_scaling":
      _check_type(f"model.{key}", values[key], hints[key])
    architecture[key] = values[key]
  if "model_type" in architecture:
    check_choice("model.model_type", architecture["model_type"], families.MODEL_TYPES)
  return _typed(
      ModelSection,
      "model",
      {**{k: values[k] for k in own}, "architecture": architecture},
      architecture=dict,
  )


def _sampler(value: Any) -> sampling.SamplerConfig:
  values = _as_dict(value, "sampler")
  configured = (
      "temperature",
      "top_p",
      "top_k",
      "max_new_tokens",
      "greedy",
      "max_decode_rows",
      "decode_segment",
  )
  _check_keys("sampler", values, configured, required=configured)
  hints = typing.get_type_hints(sampling.SamplerConfig)
  for key, item in values.items():
    _check_type(f"sampler.{key}", item, hints[key])
  return sampling.SamplerConfig(**values)


_BUILDERS = {
    "task": _builder(TaskConfig, "task", kwargs=lambda k: _as_dict(k, "task.kwargs")),
    "tokenizer": _builder(TokenizerConfig, "tokenizer"),
    "data": _builder(data.DataConfig, "data"),
    "model": _model,
    "sampler": _sampler,
    "sft": _builder(SFTConfig, "sft", optimizer=_optimizer("sft.optimizer")),
    "rl": _builder(RLConfig, "rl"),
    "optimizer": _optimizer("optimizer"),
    "loss": interventions.resolve_loss_config,
    "eval": _builder(EvalConfig, "eval"),
    "checkpoint": _builder(CheckpointConfig, "checkpoint"),
    "logging": _builder(LoggingConfig, "logging", wandb=_builder(WandbConfig, "logging.wandb")),
    "mesh": _builder(MeshConfig, "mesh"),
    "distributed": _builder(DistributedConfig, "distributed"),
}
_SECTIONS = ("seed", "method", *_BUILDERS)
