"""Synthetic RL rows, the tiny policy of the update tests and tree comparisons, shared by the
update tests (`test_update`, `test_packing`, `test_zoo_c`) and the simulated multi-device checks
(`multidevice_checks`)."""

import jax
import numpy as np

from entropix_rl.models import tiny_config

# The policy of the update and packing tests: 4 query heads over 2 KV heads, 32 tokens.
UPDATE_MODEL = tiny_config(
    vocab_size=32,
    hidden_size=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    intermediate_size=64,
    max_position_embeddings=64,
)


def rl_rows(
    vocab_size: int,
    groups: int,
    group_size: int,
    prompt: int,
    completion: int,
    *,
    seed: int = 0,
    min_length: int = 1,
    left_pad: bool = False,
) -> dict[str, np.ndarray]:
  """`groups` x `group_size` random rows in `rl_update`'s batch layout: prompts of `prompt`
  tokens (every third row left-padded by 2 when `left_pad`), completions of `min_length` to
  `completion` tokens, 0/1 rewards."""
  rng = np.random.default_rng(seed)
  n = groups * group_size
  prompt_ids = rng.integers(3, vocab_size, (n, prompt)).astype(np.int32)
  completion_ids = rng.integers(3, vocab_size, (n, completion)).astype(np.int32)
  lengths = rng.integers(min_length, completion + 1, n)
  cmask = (np.arange(completion)[None] < lengths[:, None]).astype(np.float32)
  pmask = np.ones((n, prompt), bool)
  if left_pad:
    pmask[::3, :2] = False
  return {
      "tokens": np.concatenate([np.where(pmask, prompt_ids, 0), completion_ids], 1),
      "attention_mask": np.concatenate([pmask, cmask > 0], 1),
      "completion": completion_ids,
      "completion_mask": cmask,
      "rewards": rng.integers(0, 2, n).astype(np.float32),
      "group_ids": np.repeat(np.arange(groups), group_size).astype(np.int32),
  }


def max_abs_diff(a, b) -> float:
  """The largest absolute difference between matching leaves of two trees (0.0 for none)."""
  return max(
      (
          float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
      ),
      default=0.0,
  )
