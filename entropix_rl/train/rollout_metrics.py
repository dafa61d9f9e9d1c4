"""Per-step metrics of a rollout: the entropy the paper plots, rewards, lengths, pass@k, and the
table of sample completions.

The entropy metric follows the pinned decision in docs/design.md: full-vocabulary entropy of the
temperature-scaled logits, measured by the sampler on the rollout before the update, as a
global token mean and as the paper's per-response mean (Cui et al. Eq. 5). It never depends on
the loss's aggregation mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math

import numpy as np

from entropix_rl import sharding, tasks
from entropix_rl.train.metrics import Table
from entropix_rl.train.rollout import Responses


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


SAMPLE_COLUMNS = (
    "group",
    "prompt",
    "completion",
    "reward",
    "correct",
    "length",
    "truncated",
    "entropy",
)


def samples_table(
    responses: Responses, decode: Callable[[Sequence[int]], str], num_rows: int
) -> Table:
  """The first `num_rows` rollout rows (rows of one prompt are adjacent) as a table: the
  prompt and completion text, reward, the verifier's judgement, length, truncation and the
  mean token entropy."""
  rows = []
  sums, lengths = response_entropy_sums(responses.entropy, responses.completion_mask)
  for i in range(min(num_rows, responses.rows)):
    prompt = responses.prompt_tokens[
        i, responses.prompt_tokens.shape[1] - int(responses.prompt_lengths[i]) :
    ]
    rows.append(
        (
            int(responses.group_ids[i]),
            decode(prompt),
            responses.texts[i],
            float(responses.rewards[i]),
            bool(responses.correct[i]),
            int(lengths[i]),
            bool(responses.truncated[i]),
            float(sums[i] / max(lengths[i], 1)),
        )
    )
  return Table(SAMPLE_COLUMNS, tuple(rows))


def response_metrics(responses: Responses) -> dict[str, float]:
  """Reward, accuracy, distinct correct answers, lengths and entropy of a rollout, over every
  host's rows (gathered exactly, so any number of processes gives the one-process values)."""
  sums, lengths = response_entropy_sums(responses.entropy, responses.completion_mask)
  rows = sharding.gather_host_rows(
      {
          "rewards": responses.rewards,
          "correct": responses.correct,
          "lengths": lengths,
          "truncated": responses.truncated,
          "entropy_sums": sums,
          "distinct": tasks.distinct_correct_counts(
              responses.texts, responses.correct, responses.group_ids
          ),
          **responses.row_metrics,
      }
  )
  return {
      "reward/mean": float(np.mean(rows["rewards"])),
      "accuracy/sampled": float(np.mean(rows["correct"])),
      "accuracy/distinct_correct_per_group": (
          float(np.mean(rows["distinct"])) if rows["distinct"].size else 0.0
      ),
      "response/length_mean": float(np.mean(rows["lengths"])),
      "response/truncated_frac": float(np.mean(rows["truncated"])),
      **entropy_metrics_from_sums(rows["entropy_sums"], rows["lengths"]),
      **{name: float(np.mean(rows[name])) for name in responses.row_metrics},
  }
