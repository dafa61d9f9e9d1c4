"""The paper's Qwen2.5 RL recipes (Cui et al. 2025), shared by configs/qwen25_7b.py and
configs/qwen25_32b.py: everything but the per-size constants in `RecipeSize`. The section
facts in those files' docstrings are recorded in docs/interventions.md ("The paper's training setup").
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

import ml_collections

from entropix_rl.data import DataConfig
from entropix_rl.interventions import default_loss_config
from entropix_rl.train.config import (
    CheckpointConfig,
    DistributedConfig,
    LoggingConfig,
    MeshConfig,
    SFTConfig,
    section,
)
from entropix_rl.train.optim import OptimizerConfig

METHODS = ("grpo", "clip_higher", "clip_cov", "kl_cov")


@dataclasses.dataclass(frozen=True)
class RecipeSize:
  """What differs between the 7B and 32B recipes.

  Attributes:
    config_file: the config's path, named in errors.
    learning_rate: RL learning rate (the paper's setup).
    kl_cov_ratio: KL-Cov's fraction of tokens.
    mesh_tensor: tensor-parallel size (the model's KV heads; docs/scaling.md).
    micro_batch_size: `rl.micro_batch_size` and `sft.micro_batch_size`, sequences per data
      shard per forward/backward, for the slice the config's docstring names.
    logprob_micro_batch_size: `rl.logprob_micro_batch_size` for that slice.
    max_decode_rows: `sampler.max_decode_rows` for that slice.
    checkpoint_placeholder: the `model.checkpoint` default the user must replace.
    architecture: informational model fields (the checkpoint's config.json is what is used).
  """

  config_file: str
  learning_rate: float
  kl_cov_ratio: float
  mesh_tensor: int
  micro_batch_size: int
  logprob_micro_batch_size: int
  max_decode_rows: int
  checkpoint_placeholder: str
  architecture: Mapping[str, Any]


def recipe_config(size: RecipeSize, method: str) -> ml_collections.ConfigDict:
  """The paper's recipe for one model size and one method of `METHODS`."""
  method = method or "grpo"
  if method not in METHODS:
    raise ValueError(f"{size.config_file}:{method!r}: unknown method; allowed: {METHODS}")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.method = ""  # label in plots/tables; empty = derived from the loss settings

  checkpoint = ml_collections.FieldReference(size.checkpoint_placeholder)
  config.task = ml_collections.ConfigDict({"name": "math", "kwargs": {}})
  config.tokenizer = ml_collections.ConfigDict({"kind": "hf", "path": checkpoint.identity()})
  config.data = section(
      DataConfig(
          source="file",
          path="/path/to/dapo-math-17k.parquet",
          max_prompt_len=2048,
          bad_records="fail",
      )
  )

  config.model = ml_collections.ConfigDict(
      {
          "init": "checkpoint",
          "checkpoint": checkpoint,
          "model_type": "qwen2",
          **size.architecture,
          "param_dtype": "bfloat16",
          "compute_dtype": "bfloat16",
          "attention_impl": "auto",
          "attention_block_q": 512,
          "attention_block_k": 512,
      }
  )

  config.sampler = ml_collections.ConfigDict(
      {
          "temperature": 1.0,
          "top_p": 1.0,
          "top_k": 0,
          "max_new_tokens": 8192,
          "greedy": False,
          "max_decode_rows": size.max_decode_rows,
          "decode_segment": 256,
      }
  )

  config.sft = section(
      SFTConfig(  # no SFT: RL starts from the base checkpoint
          steps=0,
          batch_size=256,
          log_every=50,
          shared_dir="",
          micro_batch_size=size.micro_batch_size,
          optimizer=OptimizerConfig(learning_rate=1e-6, warmup_steps=0, grad_clip_norm=1.0),
      )
  )

  config.rl = ml_collections.ConfigDict(
      {
          "steps": 1000,
          "prompts_per_step": 256,
          "group_size": 8,
          "ppo_epochs": 1,
          "num_minibatches": 8,
          "advantage": "grpo",
          "dynamic_sampling": True,
          "max_gen_batches": 10,
          "use_reference": False,
          "measure_dynamics": False,
          "token_chunk": 1024,
          "remat": True,
          "micro_batch_size": size.micro_batch_size,
          "logprob_micro_batch_size": size.logprob_micro_batch_size,
          "feature_chunk": 256,
          "completion_buckets": 4,
          "old_logp_from_rollout": False,
          "max_skipped_updates": 3,  # stop after 3 non-finite (skipped) updates in a row
          "step_delimiter": "",  # one step per response (EMPG, EPO)
          "cluster_by": "exact_string",  # SEED-GRPO answer clusters; "value" = math-verify's parse
      }
  )
  config.optimizer = section(
      OptimizerConfig(learning_rate=size.learning_rate, warmup_steps=0, grad_clip_norm=1.0)
  )

  config.loss = default_loss_config()
  config.loss.agg = "token-mean"
  config.loss.clip_eps_low = 0.2
  config.loss.clip_eps_high = 0.2
  config.loss.kl_ref.coef = 0.0
  config.loss.entropy_bonus.coef = 0.0
  if method == "grpo":
    config.loss.name = "ppo"
  elif method == "clip_higher":
    config.loss.name = "ppo"
    config.loss.clip_eps_high = 0.28
  elif method == "clip_cov":
    config.loss.name = "clip_cov"
    config.loss.clip_eps_low = 1.0
    config.loss.clip_eps_high = 1.0
    config.loss.clip_cov.ratio = 2e-4
    config.loss.clip_cov.lb = 1.0
    config.loss.clip_cov.ub = 5.0
  else:  # kl_cov
    config.loss.name = "kl_cov"
    config.loss.kl_cov.ratio = size.kl_cov_ratio
    config.loss.kl_cov.coef = 1.0

  config.eval = ml_collections.ConfigDict(
      {"every": 25, "num_prompts": 128, "num_samples": 8, "pass_k": (1, 8)}
  )
  config.checkpoint = section(CheckpointConfig(save_every=20, keep=2))
  config.logging = section(LoggingConfig(console_every=1, tensorboard=True))
  config.mesh = section(MeshConfig(data=1, fsdp=-1, tensor=size.mesh_tensor))
  # Unset ("", 0, -1) = discovered by JAX (TPU VMs); elsewhere set all three.
  config.distributed = section(DistributedConfig(enabled=True))
  return config


def entropy_target_sweep() -> list[dict]:
  """Entropy targets for the adaptive entropy coefficient (Skywork-OR1 controller), on top of
  the method chosen after `:` (e.g. `--config=configs/qwen25_7b.py:clip_cov`)."""
  return [
      {
          "_name": f"entropy_target_{target}",
          "loss.entropy_bonus.adaptive": True,
          "loss.entropy_bonus.target": target,
      }
      for target in (0.1, 0.2, 0.3, 0.5)
  ]
