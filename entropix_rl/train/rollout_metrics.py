"""Per-step metrics of a rollout batch: the entropy the paper plots, rewards, lengths, pass@k.

The entropy metric follows the pinned decision in docs/design.md: full-vocabulary entropy of the
temperature-scaled logits, measured by the sampler on the rollout before the update, as a
global token mean and as the paper's per-response mean (Cui et al. Eq. 5). It never depends on
the loss's aggregation mode.
"""

from __future__ import annotations

import math

import numpy as np


def response_entropy_sums(entropy: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each response's summed token entropy and its token count, `[N]` float64 each.

  Args:
    entropy: `[N, C]` per-token entropies (nats).
    mask: `[N, C]` completion mask.
  """
  entropy, mask = np.asarray(entropy, np.float64), np.asarray(mask, np.float64)
  return (entropy * mask).sum(axis=1), mask.sum(axis=1)


def entropy_metrics_from_sums(sums: np.ndarray, lengths: np.ndarray) -> dict[str, float]:
  """`entropy_metrics` from `response_entropy_sums` (which hosts can gather cheaply)."""
  sums, lengths = np.asarray(sums, np.float64), np.asarray(lengths, np.float64)
  has_tokens = lengths > 0
  per_response = sums[has_tokens] / lengths[has_tokens]
  return {
      "entropy/paper": float(per_response.mean()) if has_tokens.any() else 0.0,
      "entropy/token_mean": float(sums.sum() / max(lengths.sum(), 1.0)),
  }


def entropy_metrics(entropy: np.ndarray, mask: np.ndarray) -> dict[str, float]:
  """`entropy/paper` (mean over responses of per-response token means) and `entropy/token_mean`.

  Args:
    entropy: `[N, C]` per-token entropies (nats).
    mask: `[N, C]` completion mask.
  """
  return entropy_metrics_from_sums(*response_entropy_sums(entropy, mask))


def pass_at_k(num_samples: int, num_correct: np.ndarray, k: int) -> float:
  """Unbiased pass@k (Chen et al. 2021): mean over prompts of 1 - C(n-c, k) / C(n, k)."""
  if k > num_samples:
    raise ValueError(f"eval.pass_k={k} exceeds eval.num_samples={num_samples}")
  values = [
      1.0 - (math.comb(num_samples - int(c), k) / math.comb(num_samples, k))
      for c in np.asarray(num_correct)
  ]
  return float(np.mean(values)) if values else 0.0


def group_filter(rewards: np.ndarray, group_size: int) -> np.ndarray:
  """DAPO dynamic sampling: `[G]` bool, True for groups whose rewards are not all equal."""
  r = np.asarray(rewards).reshape(-1, group_size)
  if group_size == 1:
    return np.ones(r.shape[0], bool)
  return r.std(axis=1) > 0
