r"""Paper recipe: Qwen2.5-7B on DAPO-Math-17k, GRPO / Clip-Higher / Clip-Cov / KL-Cov.

The setup of Cui et al. 2025 (arXiv 2505.22617), as recorded in docs/interventions.md
("The paper's training setup"):

* The paper's training setup (both methods): GRPO advantages; DAPO-Math-17k; 256 prompts x 8
  responses per step; mini-batch 32 prompts, so 8 optimizer updates per rollout
  (`rl.num_minibatches = 8`, one epoch); dynamic sampling on (keep groups with
  0 < accuracy < 1, at most 10 generation rounds); token-mean loss; no KL loss or reward
  (`loss.kl_ref.coef = 0`, no reference model); entropy_coeff 0 (`loss.entropy_bonus.coef = 0`);
  lr 5e-7 for 7B (the original repo; verl's recipes use 1e-6 for both sizes); grad-clip 1.0;
  rollout temperature 1.0; max response 8192 tokens. `clip_ratio_c = 10` is passed by the
  scripts but the original vanilla loss has dual-clip commented out, so `loss.dual_clip_c` is
  left off.
* DAPO's Clip-Higher: ε_low 0.2, ε_high 0.28.
* Clip-Cov: `clip_cov.ratio` 2e-4, bounds (lb, ub) = (1, 5); the scripts set
  clip_ratio_low = clip_ratio_high = 1 (ratio clamped to [0, 2]), so `clip_eps_low =
  clip_eps_high = 1.0` here.
* KL-Cov: `kl_cov.ratio` 2e-3 for Qwen2.5-7B (a fraction; the original repo's
  `k_percent` 0.2 is in percent), `kl_cov.coef` (ppo_kl_coef) 1. No PPO clipping at all in
  KL-Cov, so the clip fields are unused for this method and left at 0.2.
* The GRPO baseline uses the symmetric ε = 0.2 (the paper's GRPO baseline runs; verl's vanilla
  PPO loss).

Usage (the text after ':' picks the method; the default is "grpo"):

  python experiments/train.py --config=configs/qwen25_7b.py:kl_cov --workdir=/data/runs/7b_kl_cov \
      --config.model.checkpoint=/data/models/Qwen2.5-7B \
      --config.data.path=/data/dapo-math-17k.parquet

`model.checkpoint` and `data.path` are placeholders that must be set. `tokenizer.path`
follows `model.checkpoint` (a derived field reference) unless it is set on its own.

Not given by the paper or its scripts, chosen here (override as needed): the number of RL steps
(`rl.steps`), the prompt budget (`data.max_prompt_len` 2048, the assumption of
docs/scaling.md), learning-rate warm-up and weight decay (none), the in-loop evaluation (the
paper evaluates AIME/AMC at temperature 0.6, avg@32, and the other benchmarks greedily, which
this trainer's eval on a held-out split of the training file does not reproduce), and the
loss micro-batch: verl computes the Clip-Cov/KL-Cov selection per micro-batch of
`ppo_max_token_len_per_gpu` 30 720 tokens on each GPU (the paper's scripts, verl); here the default
`loss.selection_scope = "batch"` selects over each whole mini-batch (32 prompts x 8), exactly
also under gradient accumulation. For verl's per-micro-batch selection set
`--config.loss.selection_scope=microbatch`: it then selects per `rl.micro_batch_size`
sequences.

Scale knobs, set for a v5p-32 slice (16 chips, 95 GiB; mesh data 1, fsdp 4, tensor 4 =
Qwen2.5-7B's KV heads): `rl.micro_batch_size` 2 sequences per device per forward/backward
(20 480 tokens; gradients accumulate over the 32-sequence mini-batch share of each device),
`rl.logprob_micro_batch_size` 4 for the no-grad passes, `sampler.max_decode_rows` 1024 (the
step's 2048 rollouts decode through a 1024-row batch whose finished rows are refilled), `rl.token_chunk` 1024. The compiled per-device
memory (`python benchmarks/memory.py --config=configs/qwen25_7b.py:clip_cov --devices=16
--mesh=1,4,4 --chip=v5p`, about 25 s) and the settings for a v6e-64 slice and an 8x H100 node
are in docs/scaling.md. `model.attention_impl` "auto" takes the splash kernel on TPU and cuDNN
on GPU. `distributed.enabled` is on for multi-host TPU slices (turn it off on a single GPU
node).
"""

import ml_collections

from entropix_rl import recipes

METHODS = recipes.METHODS
PRESETS = METHODS  # configs/qwen25_*.py:<method>

MODEL_SIZE = "7B"
LEARNING_RATE = 5e-7  # the paper's setup: 7B, original repo (verl recipes: 1e-6)
KL_COV_RATIO = 2e-3  # KL-Cov: Qwen2.5-7B
MESH_TENSOR = 4  # Qwen2.5-7B has 4 KV heads (docs/scaling.md)
CHECKPOINT_PLACEHOLDER = "/path/to/Qwen2.5-7B"
SIZE = recipes.RecipeSize(
    config_file="configs/qwen25_7b.py",
    learning_rate=LEARNING_RATE,
    kl_cov_ratio=KL_COV_RATIO,
    mesh_tensor=MESH_TENSOR,
    micro_batch_size=2,
    logprob_micro_batch_size=4,
    max_decode_rows=1024,
    checkpoint_placeholder=CHECKPOINT_PLACEHOLDER,
)


def get_config(arg: str = "grpo") -> ml_collections.ConfigDict:
  """The Qwen2.5-7B recipe for one method of `METHODS` (module docstring)."""
  return recipes.recipe_config(SIZE, arg)


def get_sweep() -> list[dict]:
  """Adaptive-entropy-coefficient targets on top of the method chosen after `:`."""
  return recipes.entropy_target_sweep()
