r"""The embedded default: entropy collapse under GRPO, and what Clip-Cov / KL-Cov do to it.

A ~0.6M-parameter Qwen2-architecture decoder, trained from scratch on sum decomposition
(`123=` -> any `a+b` with a + b = 123: many correct answers per prompt, so entropy has
something to stand for). An SFT warm start on random correct decompositions gives the
policy real competence and real entropy; then GRPO (32 prompts x 8 samples, 4 mini-batches
per rollout, Adam 3e-4, token-mean PPO loss with eps 0.2).

One method (about 2-3 minutes on 2 CPU cores after a ~1 minute SFT, shared via sft.shared_dir):

  python experiments/train.py --config=configs/quickstart.py --workdir=/tmp/qs/grpo
  python experiments/train.py --config=configs/quickstart.py --workdir=/tmp/qs/clip_cov \
      --config.loss.name=clip_cov

The three-method comparison (the README's first command):

  python experiments/quickstart.py --workdir=/tmp/entropix_quickstart

Ratios are scaled to the batch: a rollout holds ~1.5k completion tokens, so the paper's
2e-4 / 2e-3 would select 0-3 tokens (the max(1, .) floor makes them no-ops here). Clip-Cov uses
0.02 with the paper's bounds [1, 5]; KL-Cov uses 0.2 with coef 1 (configs/law.py sweeps KL-Cov's
ratio, coefficient and mini-batches; docs/results.md has the measurements).
"""

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


def get_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.method = ""  # label in plots/tables; empty = derived from the loss name

  config.task = ml_collections.ConfigDict(
      {"name": "decomposition", "kwargs": {"min_n": 100, "max_n": 999}}
  )
  config.tokenizer = ml_collections.ConfigDict({"kind": "char", "path": ""})
  config.data = section(DataConfig(source="task", max_prompt_len=8, bad_records="fail"))

  config.model = ml_collections.ConfigDict(
      {
          "init": "random",
          "checkpoint": "",
          "model_type": "qwen2",
          "hidden_size": 128,
          "num_layers": 3,
          "num_heads": 4,
          "num_kv_heads": 2,
          "head_dim": 32,
          "intermediate_size": 384,
          "max_position_embeddings": 64,
          "tie_embeddings": True,
          "qkv_bias": True,
          "rope_theta": 10000.0,
          "param_dtype": "float32",
          "compute_dtype": "float32",
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
          "max_new_tokens": 10,
          "greedy": False,
          "max_decode_rows": 0,
          "decode_segment": 64,
      }
  )

  config.sft = section(
      SFTConfig(
          steps=350,
          batch_size=256,
          log_every=50,
          shared_dir="",
          micro_batch_size=0,
          optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=20, grad_clip_norm=1.0),
      )
  )

  config.rl = ml_collections.ConfigDict(
      {
          "steps": 300,
          "prompts_per_step": 32,
          "group_size": 8,
          "ppo_epochs": 1,
          "num_minibatches": 4,
          "advantage": "grpo",
          "dynamic_sampling": False,
          "max_gen_batches": 10,
          "use_reference": True,
          "measure_dynamics": True,
          "token_chunk": 4096,
          "remat": False,
          "micro_batch_size": 0,
          "logprob_micro_batch_size": 0,
          "feature_chunk": 256,
          "completion_buckets": 1,
          "old_logp_from_rollout": False,
          # Stop after this many updates in a row with a non-finite loss or gradient (each skipped).
          "max_skipped_updates": 3,
          # Steps within a response (EMPG, EPO): "" = one step; "+" splits "a+b" into "a+" and "b".
          "step_delimiter": "",
          # Answer clusters (SEED-GRPO): "exact_string" or "value" (every correct a+b has value n).
          "cluster_by": "exact_string",
      }
  )
  # No warm-up, as in the paper's recipes; docs/results.md shows the first update's drop.
  config.optimizer = section(
      OptimizerConfig(learning_rate=3e-4, warmup_steps=0, grad_clip_norm=1.0)
  )

  config.loss = default_loss_config()
  config.loss.clip_cov.ratio = 0.02
  config.loss.kl_cov.ratio = 0.2

  config.eval = ml_collections.ConfigDict(
      {"every": 50, "num_prompts": 128, "num_samples": 8, "pass_k": (1, 8)}
  )
  config.checkpoint = section(CheckpointConfig(save_every=100, keep=2))
  config.logging = section(LoggingConfig(console_every=25, tensorboard=True))
  config.mesh = section(MeshConfig(data=-1, fsdp=1, tensor=1))
  # Unset ("", 0, -1) = discovered by JAX; set all three for processes on one machine
  # (docs/reliability.md, "Multi-process runs").
  config.distributed = section(DistributedConfig(enabled=False))

  if runlocal:
    config.sft.steps = 20
    config.rl.steps = 4
    config.rl.prompts_per_step = 8
    config.rl.num_minibatches = 2
    config.eval.every = 2
    config.eval.num_prompts = 16
    config.eval.num_samples = 4
    config.eval.pass_k = (1, 4)
    config.checkpoint.save_every = 2
    config.logging.console_every = 1
  return config
