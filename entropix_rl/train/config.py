"""The typed experiment config, and what a run derives from it with its tokenizer.

`ExperimentConfig` holds one frozen dataclass per config section. Sections whose consumer
lives elsewhere are defined beside it (`data.DataConfig`, `sampling.SamplerConfig`,
`interventions.LossConfig`, `train.optim.OptimizerConfig`,
`train.checkpoint.CheckpointConfig`, `train.metrics.LoggingConfig`, `sharding.MeshConfig`,
`sharding.DistributedConfig`); the sections only the trainer reads are here. Every dataclass
validates its own fields, naming the field and the allowed values. A config file's
`ConfigDict` becomes an `ExperimentConfig` at the binary's edge (`train.config_dict`); past it
no code reads a `ConfigDict`.

`resolve(config)` then makes the `Experiment`: the tokenizer and task, the model config (from
the architecture or a checkpoint's config.json) and the sections that depend on several
others (the sampler's stop and pad ids, the loss's micro-batch and length constants), with the
checks that need them. `check_layout(exp, mesh)` makes the checks that need the devices.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

import jax
from jax.sharding import Mesh

from entropix_rl import advantages, data, interventions, sampling, sharding, tasks
from entropix_rl.checks import check_bool, check_choice, check_int
from entropix_rl.models import ModelConfig, hf
from entropix_rl.models.architecture import SIZE_FIELDS
from entropix_rl.models.attention import ATTENTION_IMPLS
from entropix_rl.tokenizer import CharTokenizer, HFTokenizer, Tokenizer
from entropix_rl.train.checkpoint import CheckpointConfig
from entropix_rl.train.metrics import LoggingConfig
from entropix_rl.train.optim import OptimizerConfig

MODEL_INITS = ("random", "checkpoint")


class ConfigError(ValueError):
  """A config that cannot run: a bad value or combination, named with its allowed values. The
  binaries print it in one line and exit with code 2, before any work."""


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
      a decoder flag left out takes the family's value. Only the fields that differ from
      `ModelConfig`'s defaults are kept, so a config says the same thing however it is written.
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
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(ModelConfig)
        if f.default is not dataclasses.MISSING
    }
    given = {
        key: value
        for key, value in sorted(self.architecture.items())
        if value is not None and (key not in defaults or value != defaults[key])
    }
    object.__setattr__(self, "architecture", given)
    check_choice("model.init", self.init, MODEL_INITS)
    if self.init == "checkpoint" and not self.checkpoint:
      raise ValueError(
          "model.checkpoint must name a Hugging Face checkpoint directory when "
          "model.init='checkpoint'"
      )
    if self.init == "checkpoint" and given:
      raise ValueError(
          f"{['model.' + k for k in given]} are read from the checkpoint's config.json with "
          "model.init='checkpoint'; unset them (or use model.init='random')"
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
  """`config.sft`: the supervised warm start (`steps` 0 = none; `train.sft`).

  Attributes:
    steps: optimizer steps of next-token cross-entropy on the task's demonstrations.
    batch_size: demonstrations per step.
    log_every: steps between logged lines (`workdir/sft_logs/metrics.jsonl`).
    shared_dir: where the warm start is saved and looked for ("" = the run's workdir), so
      several runs can share one.
    micro_batch_size: sequences per data shard per forward/backward (0 = the whole batch).
    optimizer: its own optimizer section.
  """

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

  def check_shards(self, shards: int) -> None:
    """Raises ValueError unless the batch and its micro-batches split evenly over `shards`."""
    if self.batch_size % shards:
      raise ValueError(
          f"sft.batch_size={self.batch_size} must divide by the mesh's data x fsdp = {shards}"
      )
    per_shard = self.batch_size // shards
    if self.micro_batch_size and per_shard % self.micro_batch_size:
      raise ValueError(
          f"sft.micro_batch_size={self.micro_batch_size} must divide the {per_shard} "
          f"sequences per data shard of sft.batch_size={self.batch_size}"
      )


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """`config.rl`: the RL loop and the static settings of its update (`train.update`).

  Attributes:
    steps: RL steps (one rollout and its optimizer updates each).
    prompts_per_step: G, prompts per step; the rollout holds G × group_size responses.
    group_size: responses per prompt.
    ppo_epochs: passes over the rollout batch.
    num_minibatches: optimizer updates per epoch; rows are shuffled each epoch.
    advantage: the estimator, one of `advantages.ESTIMATORS`.
    dynamic_sampling: keep sampling until G groups have rewards that are not all equal (DAPO).
    max_gen_batches: sampling rounds per step at most, with dynamic sampling.
    use_reference: keep a frozen copy of the starting policy (KL to it is logged, and is a
      loss with `loss.kl_ref.coef > 0`).
    dynamics_every: RL steps between measurements of the predicted and actual entropy change
      of an update (`dynamics/*`, and `entropy/recomputed_token_mean`), at steps 1, 1 + k,
      1 + 2k, ...; 0 = never. A measured step computes the full-vocabulary entropy in the
      behaviour pass and runs two more no-grad forwards over the batch (about a fifth of the
      update's compute at the benchmark shape: docs/performance.md), and compiles a second
      program beside the lean one.
    token_chunk: tokens per chunk of the log-prob and entropy computation.
    remat: rematerialise decoder layers in the backward pass.
    micro_batch_size: sequences per data shard per forward/backward (verl's
      `ppo_micro_batch_size_per_gpu`); 0 = the whole mini-batch at once.
    logprob_micro_batch_size: sequences per data shard per chunk of the no-grad passes (verl's
      `log_prob_micro_batch_size_per_gpu`); 0 = all rows at once.
    micro_batch_tokens: tokens per data shard per forward/backward, the rows' real tokens
      packed side by side (`entropix_rl.packing`; verl's `ppo_max_token_len_per_gpu` with
      `use_dynamic_bsz` and `use_remove_padding`); 0 = unpacked rows. At least one row's
      width (`data.max_prompt_len + sampler.max_new_tokens`); not with `micro_batch_size`.
    logprob_micro_batch_tokens: the same for the no-grad passes (behaviour, planning and
      dynamics; verl's `log_prob_max_token_len_per_gpu`); not with `logprob_micro_batch_size`.
    feature_chunk: tokens per chunk when an intervention's logit features need full logits.
    completion_buckets: widths the update compiles for: the budget and its halves (1 = always
      the full `sampler.max_new_tokens`).
    old_logp_from_rollout: take the old log-probs and entropies from the sampler instead of a
      forward pass; exact only for on-policy rollouts at the training temperature (they differ
      by float round-off; docs/performance.md).
    max_skipped_updates: stop after this many RL steps in a row that skipped a non-finite
      optimizer update (`update/skipped`).
    step_delimiter: the string that ends a step of a response (EMPG, EPO), one token; "" = one
      step per response.
    cluster_by: how answers are clustered (SEED-GRPO, EMPO): `tasks.ANSWER_KEY_MODES`.
  """

  steps: int = 300
  prompts_per_step: int = 32
  group_size: int = 8
  ppo_epochs: int = 1
  num_minibatches: int = 4
  advantage: str = "grpo"
  dynamic_sampling: bool = False
  max_gen_batches: int = 10
  use_reference: bool = True
  dynamics_every: int = 10
  token_chunk: int = 4096
  remat: bool = False
  micro_batch_size: int = 0
  logprob_micro_batch_size: int = 0
  micro_batch_tokens: int = 0
  logprob_micro_batch_tokens: int = 0
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
    for name in ("micro_batch_size", "logprob_micro_batch_size"):
      check_int(f"rl.{name}", getattr(self, name), 0, " (0 = no splitting)")
    for prefix in ("", "logprob_"):
      check_int(
          f"rl.{prefix}micro_batch_tokens",
          getattr(self, f"{prefix}micro_batch_tokens"),
          0,
          " (0 = unpacked rows)",
      )
      if getattr(self, f"{prefix}micro_batch_tokens") and getattr(
          self, f"{prefix}micro_batch_size"
      ):
        raise ValueError(
            f"rl.{prefix}micro_batch_size and rl.{prefix}micro_batch_tokens are both set; "
            "allowed: one of them (sequences per micro-batch, or packed tokens per micro-batch)"
        )
    check_int(
        "rl.completion_buckets",
        self.completion_buckets,
        1,
        " (1 = always the full sampler.max_new_tokens)",
    )
    check_choice("rl.advantage", self.advantage, tuple(advantages.ESTIMATORS))
    check_choice("rl.cluster_by", self.cluster_by, tasks.ANSWER_KEY_MODES)
    if self.advantage in ("grpo", "rloo") and self.group_size == 1:
      raise ValueError(
          f"rl.group_size=1 with rl.advantage={self.advantage!r}: group statistics need at "
          "least 2 samples per prompt; allowed: rl.group_size >= 2"
      )
    if self.batch_size % self.num_minibatches:
      raise ValueError(
          f"rl.num_minibatches={self.num_minibatches} must divide the batch of "
          f"{self.batch_size} responses (rl.prompts_per_step x rl.group_size)"
      )
    for name in ("dynamic_sampling", "use_reference", "remat"):
      check_bool(f"rl.{name}", getattr(self, name))
    check_int("rl.dynamics_every", self.dynamics_every, 0, " (0 = never)")

  @property
  def batch_size(self) -> int:
    """Responses per step: `prompts_per_step × group_size`."""
    return self.prompts_per_step * self.group_size

  def measures_dynamics(self, step: int) -> bool:
    """Whether RL step `step` (from 1) measures the entropy change (`dynamics_every`)."""
    return self.dynamics_every > 0 and (step - 1) % self.dynamics_every == 0

  @property
  def minibatch_size(self) -> int:
    """Responses per optimizer update."""
    return self.batch_size // self.num_minibatches

  @property
  def updates_per_step(self) -> int:
    """Optimizer updates per RL step: `ppo_epochs × num_minibatches`."""
    return self.ppo_epochs * self.num_minibatches

  def check_shards(self, shards: int) -> None:
    """Raises ValueError unless the mini-batch and its micro-batches and no-grad chunks split
    evenly over `shards` (the mesh's data x fsdp)."""
    rows = self.minibatch_size
    if rows % shards:
      raise ValueError(
          f"the mini-batch of {rows} responses (rl.prompts_per_step x rl.group_size "
          f"/ rl.num_minibatches) must divide by the mesh's data x fsdp = {shards}"
      )
    for name in ("micro_batch_size", "logprob_micro_batch_size"):
      size = getattr(self, name)
      if size and (rows // shards) % size:
        raise ValueError(
            f"rl.{name}={size} must divide the {rows // shards} responses per data "
            f"shard of a mini-batch ({rows} over {shards} shards)"
        )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`config.eval`: greedy and sampled accuracy on held-out prompts (`train.evaluation`).

  Attributes:
    every: RL steps between evaluations (0 = only at the end).
    num_prompts: held-out prompts.
    num_samples: samples per prompt, for sampled accuracy and pass@k.
    pass_k: the k values of pass@k.
  """

  every: int = 25
  num_prompts: int = 128
  num_samples: int = 8
  pass_k: tuple[int, ...] = (1, 4, 8)

  def __post_init__(self):
    for name, value, minimum in (
        ("every", self.every, 0),
        ("num_prompts", self.num_prompts, 1),
        ("num_samples", self.num_samples, 1),
    ):
      if value < minimum:
        raise ValueError(f"eval.{name}={value}; allowed: an int >= {minimum}")
    bad = [k for k in self.pass_k if not 1 <= k <= self.num_samples]
    if bad:
      raise ValueError(
          f"eval.pass_k={self.pass_k}: each k must be in [1, eval.num_samples="
          f"{self.num_samples}]"
      )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Every section of an experiment, typed and validated; the defaults are the dataclasses'."""

  seed: int = 0
  method: str = ""  # the label in tables and plots; "" = derived from the loss (`method_name`)
  task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
  tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
  data: data.DataConfig = dataclasses.field(default_factory=data.DataConfig)
  model: ModelSection = dataclasses.field(default_factory=ModelSection)
  sampler: sampling.SamplerConfig = dataclasses.field(default_factory=sampling.SamplerConfig)
  sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
  rl: RLConfig = dataclasses.field(default_factory=RLConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  loss: interventions.LossConfig = dataclasses.field(default_factory=interventions.LossConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
  logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
  mesh: sharding.MeshConfig = dataclasses.field(default_factory=sharding.MeshConfig)
  distributed: sharding.DistributedConfig = dataclasses.field(
      default_factory=sharding.DistributedConfig
  )


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A typed config resolved against its tokenizer and model: everything a run needs but the
  devices.

  Attributes:
    config: the typed config.
    tokenizer: the tokenizer of `config.tokenizer`.
    task: the task of `config.task` (prompts, demonstrations, the verifier).
    model: the model config: `config.model`'s architecture, or a checkpoint's config.json.
    sampler: `config.sampler` with the tokenizer's stop and pad ids and the prompt bucket.
    loss: `config.loss` with the constants other sections decide (the micro-batch of
      `selection_scope='microbatch'`, the length of `seq-mean-token-sum-norm` when completions
      are trimmed).
    step_delimiter_id: the token id of `rl.step_delimiter`, or −1 (none).
  """

  config: ExperimentConfig
  tokenizer: Tokenizer
  task: tasks.Task
  model: ModelConfig
  sampler: sampling.SamplerConfig
  loss: interventions.LossConfig
  step_delimiter_id: int = -1


def make_task(config: ExperimentConfig) -> tasks.Task:
  """The task of `config.task`."""
  return tasks.get_task(config.task.name, **config.task.kwargs)


def make_tokenizer(config: ExperimentConfig) -> Tokenizer:
  """The tokenizer of `config.tokenizer` (a character tokenizer over the task's alphabet, or a
  Hugging Face tokenizer directory)."""
  if config.tokenizer.kind == "char":
    return CharTokenizer(make_task(config).alphabet)
  return HFTokenizer(config.tokenizer.path)


def model_config(model: ModelSection, vocab_size: int | None = None) -> ModelConfig:
  """The `ModelConfig` of `config.model`: a checkpoint's config.json, or the given architecture
  (with `vocab_size`, the character tokenizer's, filled in).

  Raises:
    ValueError: naming the missing architecture fields of `init="random"`.
  """
  if model.init == "checkpoint":
    return hf.read_config(
        model.checkpoint, param_dtype=model.param_dtype, compute_dtype=model.compute_dtype
    ).replace(**model.runtime)
  values = {
      **model.architecture,
      "param_dtype": model.param_dtype,
      "compute_dtype": model.compute_dtype,
      **model.runtime,
  }
  if vocab_size is not None:
    values["vocab_size"] = vocab_size
  missing = [k for k in SIZE_FIELDS if k not in values]
  if missing:
    raise ValueError(
        f"model.init='random' needs the architecture: {['model.' + k for k in missing]}"
    )
  return ModelConfig(**values)


def step_delimiter_id(tokenizer: Tokenizer, delimiter: str) -> int:
  """The token id of `rl.step_delimiter`, or −1 for "" (no delimiter: one step per response).

  Raises:
    ValueError: naming the field, unless the tokenizer encodes `delimiter` as one token.
  """
  if not delimiter:
    return -1
  try:
    ids = tokenizer.encode(delimiter)
  except ValueError as err:
    raise ValueError(f"rl.step_delimiter={delimiter!r} cannot be encoded: {err}") from None
  if len(ids) != 1:
    raise ValueError(
        f"rl.step_delimiter={delimiter!r} encodes to {len(ids)} tokens {ids}; "
        "allowed: a string the tokenizer encodes as exactly one token, or '' (none)"
    )
  return int(ids[0])


def resolve(
    config: ExperimentConfig,
    *,
    tokenizer: Tokenizer | None = None,
    model: ModelConfig | None = None,
) -> Experiment:
  """Resolves what depends on several sections and on the tokenizer, with its checks.

  Args:
    config: the typed config.
    tokenizer: the tokenizer (default: made from `config.tokenizer`).
    model: the model config, instead of the one `config.model` describes (e.g. a known
      architecture, for compiling without a checkpoint).

  Raises:
    ConfigError: naming the field(s) and the allowed values.
  """
  try:
    return _resolve(config, tokenizer, model)
  except (ValueError, FileNotFoundError) as err:
    if isinstance(err, ConfigError):
      raise
    raise ConfigError(str(err)) from err


def _resolve(
    config: ExperimentConfig, tokenizer: Tokenizer | None, model: ModelConfig | None
) -> Experiment:
  task = make_task(config)
  tokenizer = tokenizer or make_tokenizer(config)
  char_vocab = tokenizer.vocab_size if config.tokenizer.kind == "char" else None
  model = model or model_config(config.model, char_vocab)
  sampler = dataclasses.replace(
      config.sampler,
      stop_ids=config.sampler.stop_ids or tokenizer.stop_ids,
      pad_id=tokenizer.pad_id,
      min_prompt_bucket=config.data.max_prompt_len,
  )
  loss = config.loss
  if loss.selection_scope == "microbatch" and loss.microbatch_size is None:
    if not config.rl.micro_batch_size:
      raise ValueError(
          "loss.selection_scope='microbatch' needs loss.microbatch_size or "
          "rl.micro_batch_size (sequences per device per micro-batch, as verl)"
      )
    loss = dataclasses.replace(loss, microbatch_size=config.rl.micro_batch_size)
  if config.rl.completion_buckets > 1 and loss.loss_scale_factor is None:
    loss = dataclasses.replace(loss, loss_scale_factor=sampler.max_new_tokens)
  if config.rl.old_logp_from_rollout and interventions.changes_temperature(loss):
    raise ValueError(
        "rl.old_logp_from_rollout=True needs rollouts sampled at the training "
        "temperature; an active intervention changes the sampling temperature"
    )
  context = config.data.max_prompt_len + sampler.max_new_tokens
  if context > model.max_position_embeddings:
    raise ValueError(
        f"data.max_prompt_len ({config.data.max_prompt_len}) + "
        f"sampler.max_new_tokens ({sampler.max_new_tokens}) = {context} exceeds the "
        f"model's context (model.max_position_embeddings={model.max_position_embeddings})"
    )
  for name in ("micro_batch_tokens", "logprob_micro_batch_tokens"):
    budget = getattr(config.rl, name)
    if 0 < budget < context:
      raise ValueError(
          f"rl.{name}={budget} is shorter than one row: data.max_prompt_len "
          f"({config.data.max_prompt_len}) + sampler.max_new_tokens ({sampler.max_new_tokens}) "
          f"= {context}; allowed: 0 (unpacked rows) or >= {context}"
      )
  return Experiment(
      config=config,
      tokenizer=tokenizer,
      task=task,
      model=model,
      sampler=sampler,
      loss=loss,
      step_delimiter_id=step_delimiter_id(tokenizer, config.rl.step_delimiter),
  )


def check_layout(config: ExperimentConfig, mesh: Mesh) -> None:
  """The checks that need this job's devices and processes: batches that split over the mesh's
  data shards and over the hosts. A run makes them before any work.

  Raises:
    ConfigError: naming the field.
  """
  shards = sharding.batch_shards(mesh)
  try:
    config.rl.check_shards(shards)
    config.sft.check_shards(shards)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  hosts = jax.process_count()
  for name, rows in (
      ("rl.prompts_per_step", config.rl.prompts_per_step),
      ("eval.num_prompts", config.eval.num_prompts),
      ("sft.batch_size", config.sft.batch_size),
  ):
    if rows % hosts:
      raise ConfigError(f"{name}={rows} must divide by the {hosts} processes")


def check_inputs(exp: Experiment) -> None:
  """The checks that read the run's input files, made before any work: a prompt file's first
  records carry the fields the task reads, and its eval split holds `eval.num_prompts`.

  Raises:
    ConfigError: naming the file and the field.
  """
  cfg = exp.config
  if cfg.data.source != "file":
    return
  try:
    data.check_prompt_files(cfg.data, exp.task, cfg.eval.num_prompts)
  except (ValueError, FileNotFoundError) as err:
    raise ConfigError(str(err)) from None


def method_name(config: ExperimentConfig) -> str:
  """`method` if set, else a short label: the loss name, with clip-higher marked."""
  name = config.loss.name
  if config.loss.clip_eps_high > config.loss.clip_eps_low and name == "ppo":
    name = "clip_higher"
  if name == "ppo":
    name = "grpo" if config.rl.advantage == "grpo" else config.rl.advantage
  return config.method or name
