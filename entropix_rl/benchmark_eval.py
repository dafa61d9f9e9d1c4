"""A policy on a benchmark: avg@n and unbiased pass@k over every prompt of a file (or of a
generated task's eval split), with sampling settings of its own.

avg@n is the mean reward of n samples per prompt, averaged over prompts (the paper reports
AIME/AMC as avg@32 at temperature 0.6); pass@k is Chen et al. (2021)'s unbiased estimator
1 − C(n − c, k) / C(n, k), with c the prompt's correct samples (reward ≥ 1), averaged over
prompts, for k = 1, 2, 4, ..., n.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import time
from typing import Any

import jax
import numpy as np

from entropix_rl import data, sampling
from entropix_rl.console import Progress
from entropix_rl.models import ModelConfig
from entropix_rl.tasks.base import Example
from entropix_rl.train.rollout_metrics import pass_at_k


def pass_k_values(n: int) -> tuple[int, ...]:
  """1, 2, 4, ... up to n, and n itself."""
  ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
  return tuple(sorted(set(ks + [n])))


def evaluate_benchmark(
    model_cfg: ModelConfig,
    params: Any,
    examples: Sequence[Example],
    tokenizer,
    verify: Callable[[Example, str], float],
    sampler_cfg: sampling.SamplerConfig,
    *,
    n: int,
    max_prompt_len: int,
    batch_prompts: int,
    seed: int = 0,
    label: str = "eval",
) -> dict[str, Any]:
  """Samples `n` completions per example and scores them.

  Returns:
    `{"prompts", "samples_per_prompt", "avg@n", "pass@k": {k: value}, "mean_length",
    "seconds", "per_prompt_correct": [E]}`.
  """
  cfg = dataclasses.replace(
      sampler_cfg,
      num_samples=n,
      stop_ids=sampler_cfg.stop_ids or tokenizer.stop_ids,
      pad_id=tokenizer.pad_id,
      min_prompt_bucket=max_prompt_len,
  )
  batches = [examples[i : i + batch_prompts] for i in range(0, len(examples), batch_prompts)]
  progress = Progress(len(batches), every=1, keys=("avg@n",), label=label)
  rewards, correct, lengths = [], [], []
  t0 = time.perf_counter()
  for b, batch in enumerate(batches, 1):
    prompts = data.collate_prompts(
        [data.encode_prompt(ex, tokenizer, max_prompt_len) for ex in batch],
        max_prompt_len,
        tokenizer.pad_id,
    )
    rollout = sampling.sample(
        model_cfg,
        params,
        prompts["prompt_tokens"],
        prompts["prompt_lengths"],
        jax.random.fold_in(jax.random.PRNGKey(seed), b),
        cfg,
    )
    completions = np.asarray(rollout.completion_tokens)
    texts = [tokenizer.decode(row) for row in completions]
    scores = np.asarray([verify(batch[i // n], t) for i, t in enumerate(texts)], np.float64)
    rewards.append(scores)
    correct.append((scores.reshape(-1, n) >= 1.0).sum(axis=1))
    lengths.append(np.asarray(rollout.completion_mask).sum(axis=1))
    progress.update(b, {"avg@n": float(np.concatenate(rewards).mean())})
  per_prompt = np.concatenate(correct)
  return {
      "prompts": len(examples),
      "samples_per_prompt": n,
      "avg@n": float(np.concatenate(rewards).mean()),
      "pass@k": {k: pass_at_k(n, per_prompt, k) for k in pass_k_values(n)},
      "mean_length": float(np.concatenate(lengths).mean()),
      "seconds": time.perf_counter() - t0,
      "per_prompt_correct": per_prompt.tolist(),
  }
