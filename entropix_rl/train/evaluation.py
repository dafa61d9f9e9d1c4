"""Evaluation on held-out prompts: greedy accuracy, sampled accuracy and pass@k."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from entropix_rl import sharding
from entropix_rl.train.config import EvalConfig
from entropix_rl.train.rollout import Sampler
from entropix_rl.train.rollout_metrics import (
    entropy_metrics_from_sums,
    pass_at_k,
    response_entropy_sums,
)


def evaluate(
    sampler: Sampler,
    params: Any,
    prompts: dict[str, Any],
    eval_cfg: EvalConfig,
    rng: jax.Array,
) -> dict[str, float]:
  """Greedy and sampled accuracy on a fixed prompt set.

  Args:
    sampler: the evaluation sampler (the configured sampler, no rollout intervention).
    params: the policy's params.
    prompts: this host's eval prompts: `prompt_tokens [E, P]` left-padded, `prompt_lengths [E]`
      and their `examples` (`data.make_prompt_pipeline`).
    eval_cfg: `config.eval`.
    rng: the evaluation's PRNG key.

  Returns:
    `eval/greedy_accuracy`, `eval/sampled_accuracy`, `eval/pass@k` per k, and the sampled
    rollouts' entropy (`eval/entropy_paper`), over every host's prompts (the same values on
    every host).
  """
  n = eval_cfg.num_samples
  rows = np.arange(len(prompts["examples"]))
  args = (params, prompts["prompt_tokens"], prompts["prompt_lengths"], prompts["examples"], rows)
  greedy = sampler(*args, 1, rng, greedy=True)
  sampled = sampler(*args, n, rng, greedy=False)
  sums, lengths = response_entropy_sums(sampled.entropy, sampled.completion_mask)
  rows = sharding.gather_host_rows(
      {
          "greedy": greedy.rewards,
          "sampled": sampled.rewards,
          "entropy_sums": sums,
          "lengths": lengths,
          "correct": (sampled.rewards.reshape(-1, n) >= 1.0).sum(axis=1),
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
    out[f"eval/pass@{k}"] = pass_at_k(n, rows["correct"], k)
  return out
