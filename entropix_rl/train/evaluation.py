"""Evaluation on held-out prompts: greedy accuracy, sampled accuracy and pass@k."""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any

import jax
import numpy as np

from entropix_rl import sampling, sharding
from entropix_rl.models import ModelConfig
from entropix_rl.train.rollout_metrics import (
    entropy_metrics_from_sums,
    pass_at_k,
    response_entropy_sums,
)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Attributes: every (RL steps between evals; 0 = only at the end), num_prompts,
  num_samples (per prompt, for sampled accuracy and pass@k), pass_k (k values)."""

  every: int = 25
  num_prompts: int = 128
  num_samples: int = 8
  pass_k: tuple[int, ...] = (1, 4, 8)

  def __post_init__(self):
    for name, value, minimum in (
        ("every", self.every, 0),
        ("num_prompts", self.num_prompts, 1),
        ("num_samples", self.num_samples, 1),
    ):
      if value < minimum:
        raise ValueError(f"eval.{name}={value}; allowed: an int >= {minimum}")
    bad = [k for k in self.pass_k if not 1 <= k <= self.num_samples]
    if bad:
      raise ValueError(
          f"eval.pass_k={self.pass_k}: each k must be in [1, eval.num_samples="
          f"{self.num_samples}]"
      )


def evaluate(
    model_cfg: ModelConfig,
    params: Any,
    prompt_tokens: np.ndarray,
    prompt_lengths: np.ndarray,
    score: Callable[[Sequence[int], list[str]], np.ndarray],
    decode: Callable[[np.ndarray], list[str]],
    sampler_cfg: sampling.SamplerConfig,
    eval_cfg: EvalConfig,
    rng: jax.Array,
    *,
    mesh=None,
) -> dict[str, float]:
  """Greedy and sampled accuracy on a fixed prompt set.

  Args:
    prompt_tokens: `[E, P]` left-padded eval prompts; prompt_lengths: `[E]`.
    score: `(prompt_indices, completion_texts) -> rewards [len]` in [0, 1].
    decode: completion token rows `[n, C]` -> texts.
    mesh: optional device mesh for the sampler (then the prompts are this host's share).

  Returns:
    `eval/greedy_accuracy`, `eval/sampled_accuracy`, `eval/pass@k` per k, and the sampled
    rollouts' entropy (`eval/entropy_paper`), over every host's prompts (the same values on
    every host).
  """
  greedy_cfg = dataclasses.replace(sampler_cfg, greedy=True, num_samples=1)
  greedy = sampling.sample(
      model_cfg, params, prompt_tokens, prompt_lengths, rng, greedy_cfg, mesh=mesh
  )
  idx = np.arange(len(prompt_tokens))
  greedy_scores = score(idx, decode(np.asarray(greedy.completion_tokens)))
  sample_cfg = dataclasses.replace(sampler_cfg, greedy=False, num_samples=eval_cfg.num_samples)
  sampled = sampling.sample(
      model_cfg, params, prompt_tokens, prompt_lengths, rng, sample_cfg, mesh=mesh
  )
  sampled_scores = score(
      np.repeat(idx, eval_cfg.num_samples), decode(np.asarray(sampled.completion_tokens))
  )
  sums, lengths = response_entropy_sums(sampled.entropy, sampled.completion_mask)
  rows = sharding.gather_host_rows(
      {
          "greedy": greedy_scores,
          "sampled": sampled_scores,
          "entropy_sums": sums,
          "lengths": lengths,
          "correct": (sampled_scores.reshape(-1, eval_cfg.num_samples) >= 1.0).sum(axis=1),
      }
  )
  out = {
      "eval/greedy_accuracy": float(np.mean(rows["greedy"])),
      "eval/sampled_accuracy": float(np.mean(rows["sampled"])),
      "eval/entropy_paper": entropy_metrics_from_sums(rows["entropy_sums"], rows["lengths"])[
          "entropy/paper"
      ],
  }
  for k in eval_cfg.pass_k:
    out[f"eval/pass@{k}"] = pass_at_k(eval_cfg.num_samples, rows["correct"], k)
  return out
