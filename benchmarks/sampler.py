r"""Rollout throughput: `entropix_rl.sampling.sample` vs transformers `generate`, same model.

  python benchmarks/sampler.py            # both shapes, about 6 minutes on 2 CPU cores
  python benchmarks/sampler.py --shapes=toy --repeats=5

Two random Qwen2 models, each saved with `save_pretrained` and loaded by both sides (ours with
`entropix_rl.models.hf.load`, float32):

* `toy`: vocab 512, hidden 128, 4 layers, 64 prompts x 8 samples, up to 64 new tokens;
* `qwen2.5-0.5b`: Qwen2.5-0.5B's shape (vocab 151 936, hidden 896, 24 layers, 14 query and 2
  KV heads, MLP 4864, tied embeddings), 4 prompts x 8 samples, up to 32 new tokens.

Lengths as RL produces them: completions end at stop tokens. The unembedding is scaled down so
the next-token distribution is near uniform, and the first `vocab / (max_new_tokens / 2)`
token ids are stop tokens, so each step stops with probability about 2 / max_new_tokens: a
geometric length distribution with a median near a third of the budget and about one
completion in eight truncated. Both sides sample at temperature 1 without top-k/top-p and with
the same stop ids; each side's throughput counts the tokens it actually generated (up to and
including the stop token). Prompt lengths are drawn in [prompt_len/2, prompt_len].

Figure per shape: generated tokens per second of one whole call (prefill included), median
over `--repeats` calls after a warm-up call. One JSON line per shape; `ratio` is ours /
transformers. torch uses `--threads` threads (the cores JAX has).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from entropix_rl import sampling
from entropix_rl.models import hf

SHAPES = {
    "toy": dict(
        vocab=512,
        hidden=128,
        layers=4,
        heads=4,
        kv_heads=2,
        intermediate=384,
        tie=False,
        prompts=64,
        samples=8,
        prompt_len=16,
        new_tokens=64,
    ),
    "qwen2.5-0.5b": dict(
        vocab=151936,
        hidden=896,
        layers=24,
        heads=14,
        kv_heads=2,
        intermediate=4864,
        tie=True,
        prompts=4,
        samples=8,
        prompt_len=32,
        new_tokens=32,
    ),
}


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shapes", default=",".join(SHAPES), help="Comma-separated shape names.")
  p.add_argument("--repeats", type=int, default=3, help="Measured calls per side.")
  p.add_argument(
      "--threads",
      type=int,
      default=os.cpu_count() or 1,
      help="torch threads (match the cores JAX uses).",
  )
  return p.parse_args()


def make_model(shape: dict) -> Qwen2ForCausalLM:
  """A random Qwen2, float32, eval mode, with a near-uniform next-token distribution."""
  config = Qwen2Config(
      vocab_size=shape["vocab"],
      hidden_size=shape["hidden"],
      num_hidden_layers=shape["layers"],
      num_attention_heads=shape["heads"],
      num_key_value_heads=shape["kv_heads"],
      intermediate_size=shape["intermediate"],
      max_position_embeddings=max(256, 2 * (shape["prompt_len"] + shape["new_tokens"])),
      tie_word_embeddings=shape["tie"],
      bos_token_id=1,
      eos_token_id=2,
      pad_token_id=0,
  )
  torch.manual_seed(0)
  model = Qwen2ForCausalLM(config)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, param in model.named_parameters():
      scale = 0.1 if "norm" in name or "bias" in name else 0.08
      offset = 1.0 if "norm" in name else 0.0
      param.copy_(offset + scale * torch.randn(param.shape, generator=gen))
    unembedding = model.lm_head.weight  # tied: the embedding itself, scaled for both uses
    unembedding.mul_(0.02)
  return model.to(torch.float32).eval()


def median_seconds(fn, repeats: int) -> float:
  fn()  # warm-up (ours compiles)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def generated_tokens(rows, stop_ids) -> int:
  """Tokens up to and including each row's first stop token (all of them if none); `rows` is
  a `[B, T]` array or a list of rows of any lengths."""
  total = 0
  for row in rows:
    hits = np.flatnonzero(np.isin(np.asarray(row), stop_ids))
    total += int(hits[0]) + 1 if hits.size else len(row)
  return total


def run_shape(name: str, shape: dict, args: argparse.Namespace) -> dict:
  rng = np.random.default_rng(0)
  p, n, width, new = shape["prompts"], shape["samples"], shape["prompt_len"], shape["new_tokens"]
  lengths = rng.integers(max(1, width // 2), width + 1, size=p)
  stop_ids = np.arange(3, 3 + max(1, shape["vocab"] // (new // 2)), dtype=np.int64)
  tokens = rng.integers(3 + stop_ids.size, shape["vocab"], size=(p, width))
  attention = np.arange(width)[None, :] >= (width - lengths)[:, None]
  tokens = np.where(attention, tokens, 0).astype(np.int32)
  model = make_model(shape)
  with tempfile.TemporaryDirectory() as path:
    model.save_pretrained(path)
    model_cfg, params = hf.load(path)

  sampler_cfg = sampling.SamplerConfig(
      temperature=1.0,
      max_new_tokens=new,
      stop_ids=tuple(int(i) for i in stop_ids),
      num_samples=n,
      pad_id=0,
  )
  keys = iter(jax.random.split(jax.random.key(0), args.repeats + 1))
  ours_counts = []

  def ours():
    rollout = sampling.sample(model_cfg, params, tokens, lengths, next(keys), sampler_cfg)
    ours_counts.append(int(np.asarray(rollout.lengths).sum()))

  ours_s = median_seconds(ours, args.repeats)

  input_ids = torch.from_numpy(tokens.astype(np.int64))
  attention_mask = torch.from_numpy(attention.astype(np.int64))
  torch.manual_seed(0)
  theirs_counts = []

  def theirs():
    with torch.inference_mode():
      out = model.generate(
          input_ids=input_ids,
          attention_mask=attention_mask,
          do_sample=True,
          temperature=1.0,
          top_k=None,
          top_p=None,
          max_new_tokens=new,
          num_return_sequences=n,
          eos_token_id=stop_ids.tolist(),
          pad_token_id=0,
      )
    theirs_counts.append(generated_tokens(out[:, width:].numpy(), stop_ids))

  theirs_s = median_seconds(theirs, args.repeats)
  ours_rate = statistics.median(ours_counts) / ours_s
  theirs_rate = statistics.median(theirs_counts) / theirs_s
  return dict(
      benchmark="sampler",
      figure="rollout_tokens_per_s",
      shape=name,
      ours=ours_rate,
      baseline=theirs_rate,
      ratio=ours_rate / theirs_rate,
      unit="generated tokens/s",
      baseline_name="transformers generate",
      target=">= 2",
      ours_seconds=ours_s,
      baseline_seconds=theirs_s,
      ours_mean_length=statistics.median(ours_counts) / (p * n),
      baseline_mean_length=statistics.median(theirs_counts) / (p * n),
      repeats=args.repeats,
      threads=args.threads,
      backend=jax.default_backend(),
      **shape,
  )


def main() -> None:
  args = parse_args()
  torch.set_num_threads(args.threads)
  for name in args.shapes.split(","):
    if name not in SHAPES:
      raise SystemExit(f"--shapes: unknown shape {name!r}; allowed: {tuple(SHAPES)}")
    print(json.dumps(run_shape(name, SHAPES[name], args)), flush=True)


if __name__ == "__main__":
  main()
