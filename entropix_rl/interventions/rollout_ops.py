"""Rollout capabilities for interventions: prefix branching, sampling in bucketed prompt
counts, window means of per-token values, and group-level rewards from answer keys (majority
votes, cluster shares).

Pure NumPy on the host; model output only enters as answer keys (`Task.answer_key`), which
are parsed, never executed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import chex
import numpy as np

from entropix_rl.padding import left_pad, prompt_bucket


def window_mean(values: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
  """Mean of `values` over the `width` tokens after each position: `[N, C]` float32.

      out[i, t] = (1/w) Σ_{τ=t+1}^{t+w} values[i, τ]     if tokens t+1 .. t+w are all valid

  and NaN where the window runs past the response (ARES's high-window-entropy windows,
  docs/interventions.md).

  Args:
    values: `[N, C]` per-token values (e.g. entropies); mask: `[N, C]` valid tokens.
    width: w ≥ 1.

  Returns:
    `[N, C]` float32 window means, NaN where the window is incomplete.
  """
  chex.assert_rank(values, 2)
  chex.assert_equal_shape([values, mask])
  if width < 1:
    raise ValueError(f"width={width} must be >= 1")
  values = np.where(mask, np.asarray(values, np.float64), 0.0)
  valid = np.asarray(mask, np.int64)
  n, c = values.shape
  sums = np.concatenate([np.zeros((n, 1)), np.cumsum(values, axis=1)], axis=1)
  counts = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(valid, axis=1)], axis=1)
  start = np.arange(c) + 1
  end = np.minimum(start + width, c)
  window_sum = sums[:, end] - sums[:, np.minimum(start, c)]
  full = (counts[:, end] - counts[:, np.minimum(start, c)]) == width
  return np.where(full, window_sum / width, np.nan).astype(np.float32)


def branch_prompts(
    responses, rows: np.ndarray, cuts: np.ndarray, *, min_bucket: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
  """Prompts for regenerating `rows` from a prefix: prompt ⊕ completion[:cut].

  The token at `cut` is regenerated (CURE's critical token, a fork point of a tree).

  Args:
    responses: the sampled rows (`train.rollout.Responses`).
    rows: `[M]` row indices; cuts: `[M]` completion positions (0 = regenerate from scratch).
    min_bucket: smallest prompt width (widths are rounded up to a power of two).

  Returns:
    `[M, P']` left-padded prompts and `[M]` lengths.
  """
  rows, cuts = np.asarray(rows, np.int64), np.asarray(cuts, np.int64)
  chex.assert_rank(rows, 1)
  chex.assert_equal_shape([rows, cuts])
  if np.any(cuts < 0) or np.any(cuts > responses.completion_mask[rows].sum(axis=1)):
    raise ValueError("branch_prompts: cuts must lie within each response")
  seqs = []
  for row, cut in zip(rows, cuts):
    n = int(responses.prompt_lengths[row])
    prompt = responses.prompt_tokens[row, responses.prompt_tokens.shape[1] - n :]
    seqs.append(np.concatenate([prompt, responses.completion_tokens[row, :cut]]))
  lengths = np.asarray([len(s) for s in seqs], np.int32)
  tokens, _ = left_pad(seqs, prompt_bucket(int(lengths.max(initial=1)), min_bucket), pad_id)
  return tokens, lengths


def sample_in_buckets(
    sample,
    prompt_tokens: np.ndarray,
    prompt_lengths: np.ndarray,
    examples: Sequence,
    group_ids: np.ndarray,
    num_samples: int,
    key,
    prefix_lengths: np.ndarray | None = None,
):
  """`sample(...)` (`RolloutContext.sample`) with the number of prompts rounded up to a power
  of two by repeating the last prompt, so that calls with varying prompt counts reuse a few
  compiled sampler programs. Returns the rows of the given prompts only; row r draws the same
  randomness as without the padding.

  Args:
    sample: the sampler (`RolloutContext.sample`).
    prompt_tokens: `[P, W]` left-padded prompts.
    prompt_lengths: `[P]` prompt lengths.
    examples: `P` examples.
    group_ids: `[P]` prompt groups.
    num_samples: responses per prompt.
    key: PRNG key.
    prefix_lengths: `[P]` prefix tokens at the end of each prompt, or None.

  Returns:
    The `P · num_samples` sampled rows.
  """
  prompt_tokens, prompt_lengths = np.asarray(prompt_tokens), np.asarray(prompt_lengths)
  chex.assert_rank([prompt_tokens, prompt_lengths], [2, 1])
  chex.assert_shape(
      [prompt_lengths, np.asarray(group_ids)]
      + ([] if prefix_lengths is None else [np.asarray(prefix_lengths)]),
      prompt_tokens.shape[:1],
  )
  chex.assert_equal(len(examples), len(prompt_lengths))
  count = len(prompt_lengths)
  if not count:
    raise ValueError("sample_in_buckets: no prompts to sample")
  pad = np.concatenate([np.arange(count), np.full(prompt_bucket(count, 1) - count, count - 1)])
  rows = sample(
      np.asarray(prompt_tokens)[pad],
      np.asarray(prompt_lengths)[pad],
      [examples[i] for i in pad],
      np.asarray(group_ids)[pad],
      num_samples,
      key,
      prefix_lengths=None if prefix_lengths is None else np.asarray(prefix_lengths)[pad],
  )
  return rows.take(np.arange(count * num_samples))


def majority_labels(
    keys: Sequence[Hashable | None], group_ids: np.ndarray
) -> dict[int, Hashable | None]:
  """Each group's most common answer key (ties: the first to reach the top count; None when
  no response of the group has an answer), from `N` answer keys and `[N]` group ids."""
  chex.assert_shape(np.asarray(group_ids), (len(keys),))
  counts: dict[int, dict[Hashable, int]] = {}
  for key, group in zip(keys, np.asarray(group_ids)):
    counts.setdefault(int(group), {})
    if key is not None:
      counts[int(group)][key] = counts[int(group)].get(key, 0) + 1
  return {g: (max(c, key=c.get) if c else None) for g, c in counts.items()}


def cluster_fractions(keys: Sequence[Hashable | None], group_ids: np.ndarray) -> np.ndarray:
  """`[N]` the fraction of its group that shares each response's answer key, `|c(i)| / G`;
  a response without an answer counts as its own cluster, `1 / G`. `group_ids`: `[N]`."""
  group_ids = np.asarray(group_ids)
  chex.assert_shape(group_ids, (len(keys),))
  out = np.zeros(len(keys), np.float32)
  for group in np.unique(group_ids):
    rows = np.flatnonzero(group_ids == group)
    sizes: dict[Hashable, int] = {}
    for i in rows:
      if keys[i] is not None:
        sizes[keys[i]] = sizes.get(keys[i], 0) + 1
    for i in rows:
      out[i] = (sizes[keys[i]] if keys[i] is not None else 1) / len(rows)
  return out
