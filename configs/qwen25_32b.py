r"""Paper recipe: Qwen2.5-32B on DAPO-Math-17k, GRPO / Clip-Higher / Clip-Cov / KL-Cov.

The same recipe as configs/qwen25_7b.py (its docstring has the full notes and the
docs/interventions.md sections they come from), with the 32B constants:

* lr 1e-6 (the paper's setup; verl's recipes use 1e-6 for both sizes);
* `kl_cov.ratio` 2e-4 (KL-Cov; the original repo's `k_percent` 0.02 is in percent);
* scale knobs for a v5p-128 slice (64 chips, 95 GiB; mesh data 1, fsdp 8, tensor 8 =
  Qwen2.5-32B's KV heads): `rl.micro_batch_size` 1 (10 240 tokens per device per
  forward/backward), `rl.logprob_micro_batch_size` 2, `sampler.max_decode_rows` 512 (a
  512-row decode batch, refilled as rows finish, for the step's 2048 rollouts), `rl.token_chunk` 1024. Compiled per-device memory: `python
  benchmarks/memory.py --config=configs/qwen25_32b.py:kl_cov --arch=qwen2.5-32b --devices=64
  --mesh=1,8,8 --chip=v5p` (about 25 s), figures in docs/scaling.md;
* for verl's per-micro-batch selection, `--config.loss.selection_scope=microbatch` (it then
  selects per `rl.micro_batch_size` sequences).

Usage (the text after ':' picks the method; the default is "grpo"):

  python experiments/train.py --config=configs/qwen25_32b.py:kl_cov --workdir=/data/runs/32b \
      --config.model.checkpoint=/data/models/Qwen2.5-32B \
      --config.data.path=/data/dapo-math-17k.parquet
"""

import ml_collections

from entropix_rl import recipes

METHODS = recipes.METHODS
PRESETS = METHODS  # configs/qwen25_*.py:<method>

MODEL_SIZE = "32B"
LEARNING_RATE = 1e-6  # the paper's setup: 32B
KL_COV_RATIO = 2e-4  # KL-Cov: Qwen2.5-32B
MESH_TENSOR = 8  # Qwen2.5-32B has 8 KV heads (docs/scaling.md)
CHECKPOINT_PLACEHOLDER = "/path/to/Qwen2.5-32B"
SIZE = recipes.RecipeSize(
    config_file="configs/qwen25_32b.py",
    learning_rate=LEARNING_RATE,
    kl_cov_ratio=KL_COV_RATIO,
    mesh_tensor=MESH_TENSOR,
    micro_batch_size=1,
    logprob_micro_batch_size=2,
    max_decode_rows=512,
    checkpoint_placeholder=CHECKPOINT_PLACEHOLDER,
)


def get_config(arg: str = "grpo") -> ml_collections.ConfigDict:
  """The Qwen2.5-32B recipe for one method of `METHODS` (module docstring)."""
  return recipes.recipe_config(SIZE, arg)


def get_sweep() -> list[dict]:
  """Adaptive-entropy-coefficient targets on top of the method chosen after `:`."""
  return recipes.entropy_target_sweep()
