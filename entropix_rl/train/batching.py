"""Host-side assembly of model inputs from token lists and rollouts (NumPy, outside jit)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from entropix_rl.padding import left_pad


def sft_batch(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], length: int, pad_id: int
) -> dict[str, np.ndarray]:
  """Demonstrations as one left-padded sequence each, with the completion tokens marked.

  Returns `tokens [B, length]`, `attention_mask [B, length]` and `loss_mask [B, length]`
  (1.0 on completion tokens, which the model learns to predict).
  """
  rows = [list(p) + list(c) for p, c in zip(prompts, completions)]
  tokens, mask = left_pad(rows, length, pad_id)
  loss_mask = np.zeros((len(rows), length), np.float32)
  for i, c in enumerate(completions):
    if len(c):
      loss_mask[i, length - len(c) :] = 1.0
  return {"tokens": tokens, "attention_mask": mask, "loss_mask": loss_mask}


def rl_batch(
    prompt_tokens: np.ndarray,
    prompt_mask: np.ndarray,
    completion: np.ndarray,
    completion_mask: np.ndarray,
    rewards: np.ndarray,
    group_ids: np.ndarray,
) -> dict[str, np.ndarray]:
  """The `rl_update` batch: prompt and completion side by side (docs in `make_rl_update`).

  Args:
    prompt_tokens: `[N, P]` left-padded prompts; prompt_mask: `[N, P]` bool.
    completion: `[N, C]` sampled tokens; completion_mask: `[N, C]` (through the stop token).
    rewards: `[N]`; group_ids: `[N]` in `[0, num_groups)`.
  """
  completion_mask = np.asarray(completion_mask, np.float32)
  return {
      "tokens": np.concatenate([prompt_tokens, completion], axis=1).astype(np.int32),
      "attention_mask": np.concatenate([prompt_mask, completion_mask > 0], axis=1),
      "completion": np.asarray(completion, np.int32),
      "completion_mask": completion_mask,
      "rewards": np.asarray(rewards, np.float32),
      "group_ids": np.asarray(group_ids, np.int32),
  }


def abstract_rl_batch(
    n: int, prompt_len: int, completion_len: int, sharding: jax.sharding.Sharding | None = None
) -> dict[str, jax.ShapeDtypeStruct]:
  """The `rl_batch` layout for `n` rows as abstract arrays, to lower `rl_update` without data.

  The fields, shapes and dtypes come from `rl_batch` itself on one row of zeros, so they cannot
  drift from what the trainer feeds the update.
  """
  one = rl_batch(
      np.zeros((1, prompt_len), np.int32),
      np.ones((1, prompt_len), bool),
      np.zeros((1, completion_len), np.int32),
      np.ones((1, completion_len), np.float32),
      np.zeros((1,), np.float32),
      np.zeros((1,), np.int32),
  )
  return {
      k: jax.ShapeDtypeStruct((n, *v.shape[1:]), v.dtype, sharding=sharding) for k, v in one.items()
  }


COMPLETION_FIELDS = ("completion", "completion_mask", "old_logp", "old_entropy")


def trim_completions(
    batch: dict[str, np.ndarray], *, budget: int, buckets: int, longest: int
) -> dict[str, np.ndarray]:
  """Cuts an `rl_batch`'s completion axis to the smallest bucket that holds `longest` tokens.

  The buckets are the budget and its halves, `ceil(budget / 2^k)` for `k < buckets`, so a run
  compiles its update for at most `buckets` shapes while short completions stop paying for
  the whole budget. Only padding is cut.

  Args:
    batch: `rl_batch` arrays (plus optional per-token `old_logp`, `old_entropy`), completion
      width `budget`.
    budget: `sampler.max_new_tokens`.
    buckets: `rl.completion_buckets` (1 = never cut).
    longest: the longest completion of the step (over every host).

  Returns:
    The batch with completion width the chosen bucket.
  """
  widths = [-(-budget // 2**k) for k in range(buckets)]
  width = min(w for w in widths if w >= longest)
  if width == budget:
    return batch
  cut = batch["tokens"].shape[1] - budget + width
  trimmed = {k: v[:, :width] for k, v in batch.items() if k in COMPLETION_FIELDS}
  trimmed.update(tokens=batch["tokens"][:, :cut], attention_mask=batch["attention_mask"][:, :cut])
  return dict(batch, **trimmed)
