r"""Paper recipe: Qwen2.5-7B on DAPO-Math-17k, GRPO / Clip-Higher / Clip-Cov / KL-Cov.

The setup of Cui et al. 2025 (arXiv 2505.22617), as recorded in /work/shared/INTERVENTIONS.md
(section numbers below refer to it):

* §5c (reference setup, both methods): GRPO advantages; DAPO-Math-17k; 256 prompts x 8
  responses per step; mini-batch 32 prompts, so 8 optimizer updates per rollout
  (`rl.num_minibatches = 8`, one epoch); dynamic sampling on (keep groups with
  0 < accuracy < 1, at most 10 generation rounds); token-mean loss; no KL loss or reward
  (`loss.kl_ref.coef = 0`, no reference model); entropy_coeff 0 (`loss.entropy_bonus.coef = 0`);
  lr 5e-7 for 7B (the original repo; verl's recipes use 1e-6 for both sizes); grad-clip 1.0;
  rollout temperature 1.0; max response 8192 tokens. `clip_ratio_c = 10` is passed by the
  scripts but the original vanilla loss has dual-clip commented out, so `loss.dual_clip_c` is
  left off.
* §3 (DAPO Clip-Higher): ε_low 0.2, ε_high 0.28.
* §5a (Clip-Cov): `clip_cov.ratio` 2e-4, bounds (lb, ub) = (1, 5); the scripts set
  clip_ratio_low = clip_ratio_high = 1 (ratio clamped to [0, 2]), so `clip_eps_low =
  clip_eps_high = 1.0` here.
* §5b (KL-Cov): `kl_cov.ratio` 2e-3 for Qwen2.5-7B (a fraction; the original repo's
  `k_percent` 0.2 is in percent), `kl_cov.coef` (ppo_kl_coef) 1. No PPO clipping at all in
  KL-Cov, so the clip fields are unused for this method and left at 0.2.
* The GRPO baseline uses the symmetric ε = 0.2 (§2's fit runs; §0's vanilla PPO loss).

Usage (the text after ':' picks the method; the default is "grpo"):

  python experiments/train.py --config=configs/qwen25_7b.py:kl_cov --workdir=/data/runs/7b_kl_cov \
      --config.model.checkpoint=/data/models/Qwen2.5-7B \
      --config.data.path=/data/dapo-math-17k.parquet

`model.checkpoint` and `data.path` are placeholders that must be set. `tokenizer.path`
follows `model.checkpoint` (a derived field reference) unless it is set on its own.

Not given in INTERVENTIONS.md, chosen here (override as needed): the number of RL steps
(`rl.steps`), the prompt budget (`data.max_prompt_len` 2048, the assumption of
docs/scaling.md), learning-rate warm-up and weight decay (none), the in-loop evaluation (the
paper evaluates AIME/AMC at temperature 0.6, avg@32, and the other benchmarks greedily, which
this trainer's eval on a held-out split of the training file does not reproduce), and the
loss micro-batch: verl computes the Clip-Cov/KL-Cov selection per micro-batch of
`ppo_max_token_len_per_gpu` 30 720 tokens on each GPU (§5c, §5d); here the default
`loss.selection_scope = "batch"` selects over each whole mini-batch (32 prompts x 8).
For a closer reproduction set `--config.loss.selection_scope=microbatch
--config.loss.microbatch_size=4` (it must divide the 256-sequence mini-batch; a 30 720-token
pack holds 3 full-length sequences of 2048 + 8192 tokens, more short ones).

The mesh (data 1, fsdp -1, tensor 4 = Qwen2.5-7B's KV heads) and memory budget follow
docs/scaling.md; `distributed.enabled` is on for multi-host TPU slices (turn it off on a
single GPU node).
"""

import ml_collections

from entropix_rl.losses import default_loss_config

METHODS = ("grpo", "clip_higher", "clip_cov", "kl_cov")

MODEL_SIZE = "7B"
LEARNING_RATE = 5e-7  # §5c: 7B, original repo (verl recipes: 1e-6)
KL_COV_RATIO = 2e-3  # §5b: Qwen2.5-7B
MESH_TENSOR = 4  # Qwen2.5-7B has 4 KV heads (docs/scaling.md)
CHECKPOINT_PLACEHOLDER = "/path/to/Qwen2.5-7B"
# Informational only: with model.init="checkpoint" the architecture is read from the
# checkpoint's config.json (values as entropix_rl.memory.qwen25_config("7B")).
ARCHITECTURE = dict(hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
                    intermediate_size=18944, max_position_embeddings=32768,
                    tie_embeddings=False, qkv_bias=True, rope_theta=1e6)


def get_config(arg: str = "grpo") -> ml_collections.ConfigDict:
  """The Qwen2.5-7B recipe for one method of `METHODS` (module docstring)."""
  method = arg or "grpo"
  if method not in METHODS:
    raise ValueError(f"configs/qwen25_7b.py:{method!r}: unknown method; allowed: {METHODS}")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.method = ""  # label in plots/tables; empty = derived from the loss settings

  checkpoint = ml_collections.FieldReference(CHECKPOINT_PLACEHOLDER)
  config.task = ml_collections.ConfigDict({"name": "math", "kwargs": {}})
  config.tokenizer = ml_collections.ConfigDict({"kind": "hf", "path": checkpoint.identity()})
  config.data = ml_collections.ConfigDict({
      "source": "file", "path": "/path/to/dapo-math-17k.parquet", "max_prompt_len": 2048,
  })

  config.model = ml_collections.ConfigDict({
      "init": "checkpoint", "checkpoint": checkpoint, "model_type": "qwen2", **ARCHITECTURE,
      "param_dtype": "bfloat16", "compute_dtype": "bfloat16",
  })

  config.sampler = ml_collections.ConfigDict({
      "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 8192, "greedy": False,
  })

  config.sft = ml_collections.ConfigDict({  # no SFT: RL starts from the base checkpoint
      "steps": 0, "batch_size": 256, "log_every": 50, "shared_dir": "",
      "optimizer": {"learning_rate": 1e-6, "warmup_steps": 0, "grad_clip_norm": 1.0},
  })

  config.rl = ml_collections.ConfigDict({
      "steps": 1000, "prompts_per_step": 256, "group_size": 8, "ppo_epochs": 1,
      "num_minibatches": 8, "advantage": "grpo", "dynamic_sampling": True,
      "max_gen_batches": 10, "use_reference": False, "measure_dynamics": False,
      "token_chunk": 4096, "remat": True,
  })
  config.optimizer = ml_collections.ConfigDict({"learning_rate": LEARNING_RATE,
                                                "grad_clip_norm": 1.0})

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
    config.loss.kl_cov.ratio = KL_COV_RATIO
    config.loss.kl_cov.coef = 1.0

  config.eval = ml_collections.ConfigDict({"every": 25, "num_prompts": 128, "num_samples": 8,
                                           "pass_k": (1, 8)})
  config.checkpoint = ml_collections.ConfigDict({"save_every": 20, "keep": 2})
  config.logging = ml_collections.ConfigDict({"console_every": 1, "tensorboard": True})
  config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": MESH_TENSOR})
  config.distributed = ml_collections.ConfigDict({"enabled": True})
  return config
