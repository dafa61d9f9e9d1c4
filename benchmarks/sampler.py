r"""Generation throughput: `entropix_rl.sampling.sample` vs transformers `generate`, same model.

  python benchmarks/sampler.py [--prompts 64 --samples 8 --prompt_len 16 --new_tokens 32]

A random Qwen2 model (every weight random, as `tests/hf_utils.make_hf_model`) is saved with
`save_pretrained` and loaded by both sides: ours with `entropix_rl.models.hf.load`, float32.
Both sample `--samples` completions of exactly `--new_tokens` tokens for each of `--prompts`
left-padded prompts (lengths drawn in [prompt_len/2, prompt_len]), temperature 1, no top-k /
top-p, no stop token (ours: `stop_ids=()`; HF: `do_sample=True`, `min_new_tokens` =
`max_new_tokens`, `eos_token_id=None`). torch uses `--threads` threads (the cores JAX has).

Figure: generated tokens (rows x new tokens) per second of one whole generation call
(prefill included on both sides), median over `--repeats` calls after one warm-up call (ours:
a full call, which compiles; transformers: a 2-prompt, 2-token call, as nothing compiles).
One JSON line per figure; the ratio is ours / transformers.
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
from entropix_rl import sampling  # noqa: E402
from entropix_rl.models import hf  # noqa: E402


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--prompts", type=int, default=64, help="Prompts per batch.")
  p.add_argument("--samples", type=int, default=8, help="Completions per prompt.")
  p.add_argument("--prompt_len", type=int, default=16, help="Longest prompt (tokens).")
  p.add_argument("--new_tokens", type=int, default=32, help="Tokens generated per completion.")
  p.add_argument("--vocab", type=int, default=512)
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--kv_heads", type=int, default=2)
  p.add_argument("--intermediate", type=int, default=384)
  p.add_argument("--repeats", type=int, default=3, help="Measured calls per side.")
  p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                 help="torch threads (match the cores JAX uses).")
  return p.parse_args()


def emit(**record) -> None:
  print(json.dumps(record), flush=True)


def make_model(args: argparse.Namespace) -> Qwen2ForCausalLM:
  """A random Qwen2 with every weight random (norms and biases too), float32, eval mode."""
  config = Qwen2Config(
      vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
      intermediate_size=args.intermediate,
      max_position_embeddings=max(256, 2 * (args.prompt_len + args.new_tokens)),
      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  torch.manual_seed(0)
  model = Qwen2ForCausalLM(config)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, param in model.named_parameters():
      scale = 0.1 if "norm" in name or "bias" in name else 0.08
      offset = 1.0 if "norm" in name else 0.0
      param.copy_(offset + scale * torch.randn(param.shape, generator=gen))
  return model.to(torch.float32).eval()


def median_seconds(fn, repeats: int, warmup_fn=None) -> tuple[float, float]:
  """(median seconds over `repeats` calls, seconds of the warm-up call `warmup_fn or fn`)."""
  start = time.perf_counter()
  (warmup_fn or fn)()
  warmup = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), warmup


def main() -> None:
  args = parse_args()
  torch.set_num_threads(args.threads)
  rng = np.random.default_rng(0)
  lengths = rng.integers(max(1, args.prompt_len // 2), args.prompt_len + 1, size=args.prompts)
  tokens = rng.integers(3, args.vocab, size=(args.prompts, args.prompt_len))
  attention = np.arange(args.prompt_len)[None, :] >= (args.prompt_len - lengths)[:, None]
  tokens = np.where(attention, tokens, 0).astype(np.int32)  # left-padded with pad id 0
  rows = args.prompts * args.samples
  generated = rows * args.new_tokens
  shape = dict(prompts=args.prompts, samples=args.samples, prompt_len=args.prompt_len,
               new_tokens=args.new_tokens, vocab=args.vocab, hidden=args.hidden,
               layers=args.layers, repeats=args.repeats, threads=args.threads,
               backend=jax.default_backend(), jax_devices=jax.device_count())

  model = make_model(args)
  with tempfile.TemporaryDirectory() as path:
    model.save_pretrained(path)
    model_cfg, params = hf.load(path)

  # Ours.
  sampler_cfg = sampling.SamplerConfig(
      temperature=1.0, max_new_tokens=args.new_tokens, stop_ids=(), num_samples=args.samples,
      greedy=False, pad_id=0)
  keys = iter(jax.random.split(jax.random.key(0), args.repeats + 1))

  def ours():
    rollout = sampling.sample(model_cfg, params, tokens, lengths, next(keys), sampler_cfg)
    jax.block_until_ready(rollout)
    assert int(rollout.lengths.min()) == args.new_tokens
    return rollout

  ours_s, ours_first = median_seconds(ours, args.repeats)

  # transformers.
  input_ids = torch.from_numpy(tokens.astype(np.int64))
  attention_mask = torch.from_numpy(attention.astype(np.int64))
  model.generation_config.eos_token_id = None
  torch.manual_seed(0)

  def theirs(prompts: int = args.prompts, new_tokens: int = args.new_tokens):
    with torch.inference_mode():
      out = model.generate(
          input_ids=input_ids[:prompts], attention_mask=attention_mask[:prompts],
          do_sample=True, temperature=1.0, top_k=None, top_p=None, max_new_tokens=new_tokens,
          min_new_tokens=new_tokens, num_return_sequences=args.samples, eos_token_id=None,
          pad_token_id=0)
    assert out.shape == (prompts * args.samples, args.prompt_len + new_tokens), out.shape
    return out

  # transformers compiles nothing: a small warm-up call (2 prompts, 2 tokens) is enough.
  theirs_s, theirs_first = median_seconds(theirs, args.repeats, lambda: theirs(2, 2))

  emit(benchmark="sampler", figure="decode_tokens_per_s", ours=generated / ours_s,
       baseline=generated / theirs_s, ratio=theirs_s / ours_s, unit="tokens/s",
       baseline_name="transformers generate", target=">= 3", **shape)
  emit(benchmark="sampler", figure="generate_call_seconds", ours=ours_s, baseline=theirs_s,
       ratio=ours_s / theirs_s, unit="s", ours_first_call_s=ours_first,
       baseline_first_call_s=theirs_first, **shape)
  emit(benchmark="sampler", figure="kv_cache_bytes_per_token",
       ours=model_cfg.kv_cache_bytes_per_token(), unit="bytes/token/row",
       compute_dtype=str(model_cfg.compute_dtype), **shape)


if __name__ == "__main__":
  main()
