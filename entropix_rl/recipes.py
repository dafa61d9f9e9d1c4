"""The paper's Qwen2.5 RL recipes (Cui et al. 2025), shared by configs/qwen25_7b.py and
configs/qwen25_32b.py: everything but the per-size constants in `RecipeSize`. The section
facts in those files' docstrings are recorded in docs/interventions.md ("The paper's training setup").
"""

from __future__ import annotations

import dataclasses

import ml_collections

from entropix_rl.train.config_dict import default_config

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
  """

  config_file: str
  learning_rate: float
  kl_cov_ratio: float
  mesh_tensor: int
  micro_batch_size: int
  logprob_micro_batch_size: int
  max_decode_rows: int
  checkpoint_placeholder: str


def recipe_config(size: RecipeSize, method: str) -> ml_collections.ConfigDict:
  """The paper's recipe for one model size and one method of `METHODS`."""
  method = method or "grpo"
  if method not in METHODS:
    raise ValueError(f"{size.config_file}:{method!r}: unknown method; allowed: {METHODS}")
  config = default_config()  # every field at its default; set here is only what differs
  checkpoint = ml_collections.FieldReference(size.checkpoint_placeholder)
  config.task.name = "math"
  config.tokenizer.kind = "hf"
  config.tokenizer.path = checkpoint.identity()
  config.data.source = "file"
  config.data.path = "/path/to/dapo-math-17k.parquet"
  config.data.max_prompt_len = 2048

  config.model.init = "checkpoint"
  config.model.checkpoint = checkpoint
  config.model.param_dtype = "bfloat16"
  config.model.compute_dtype = "bfloat16"

  config.sampler.max_new_tokens = 8192
  config.sampler.max_decode_rows = size.max_decode_rows
  config.sampler.decode_segment = 256

  config.sft.micro_batch_size = size.micro_batch_size  # no SFT: RL starts from the checkpoint

  config.rl.steps = 1000
  config.rl.prompts_per_step = 256
  config.rl.num_minibatches = 8
  config.rl.dynamic_sampling = True
  config.rl.use_reference = False
  config.rl.dynamics_every = 0
  config.rl.token_chunk = 1024
  config.rl.remat = True
  config.rl.micro_batch_size = size.micro_batch_size
  config.rl.logprob_micro_batch_size = size.logprob_micro_batch_size
  config.rl.completion_buckets = 4
  config.optimizer.learning_rate = size.learning_rate

  # grpo: the default PPO loss. The Clip-Cov and KL-Cov sections' defaults are the paper's
  # (ratio 2e-4 and bounds [1, 5]; coef 1), so only what differs from them is set.
  if method == "clip_higher":
    config.loss.clip_eps_high = 0.28
  elif method == "clip_cov":
    config.loss.name = "clip_cov"
    config.loss.clip_eps_low = 1.0
    config.loss.clip_eps_high = 1.0
  elif method == "kl_cov":
    config.loss.name = "kl_cov"
    config.loss.kl_cov.ratio = size.kl_cov_ratio

  config.eval.pass_k = (1, 8)
  config.checkpoint.save_every = 20
  config.logging.console_every = 1
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.mesh.tensor = size.mesh_tensor
  # Unset ("", 0, -1) = discovered by JAX (TPU VMs); elsewhere set all three.
  config.distributed.enabled = True
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
