r"""Chunked vs naive token log-prob/entropy: compiled peak temporary memory, and a small timing.

  python benchmarks/token_stats.py [--vocab 151936 --hidden 3584 --batch 16 --time 1024]

Memory: for the 7B shape (vocab 151936, hidden 3584, 16384 tokens as [16, 1024], bfloat16
hidden and unembedding), `loss = −mean(logp) − 0.01·mean(entropy)` is compiled twice per
version: forward only (`jax.jit(loss)`) and forward+backward (`jax.jit(jax.value_and_grad(loss,
argnums=(hidden, unembed)))`). Inputs are abstract `jax.ShapeDtypeStruct`s, so nothing is
allocated or run; the figure is `.lower(...).compile().memory_analysis().temp_size_in_bytes`,
the compiler's peak of temporary buffers (inputs and outputs excluded), on the default backend.
`ours` is `entropix_rl.token_stats.token_logp_entropy` (one line per `--vocab_chunks` setting),
`baseline` is `naive_logp_entropy` (the whole `[tokens, vocab]` float32 logits); target:
ours / baseline <= 1/8. `--dtypes` also compiles float32 inputs: XLA's CPU backend has no
bfloat16 matmul and converts the whole bfloat16 unembedding to a float32 temporary (2 GiB at
this shape) before the loops, which GPU/TPU do not; the float32 figures show the chunking
without that CPU-only buffer.

Timing: the forward+backward step run on a small float32 shape (`--time_*` flags) for both
versions, median of `--repeats` calls after a warm-up (compiling) call.

One JSON line per figure; every ratio is ours / baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from entropix_rl import token_stats


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--vocab", type=int, default=151936, help="Vocabulary size (memory figures).")
  p.add_argument("--hidden", type=int, default=3584, help="Hidden size (memory figures).")
  p.add_argument("--batch", type=int, default=16, help="Sequences; tokens = batch * time.")
  p.add_argument("--time", type=int, default=1024, help="Tokens per sequence.")
  p.add_argument(
      "--dtypes",
      default="bfloat16,float32",
      help="Comma-separated dtypes of hidden and unembedding (memory figures).",
  )
  p.add_argument("--token_chunk", type=int, default=1024, help="Chunked: tokens per chunk.")
  p.add_argument(
      "--vocab_chunks",
      default="none,32768",
      help="Chunked: comma-separated vocab_chunk settings ('none' = whole vocab).",
  )
  p.add_argument("--time_tokens", type=int, default=2048, help="Timing: tokens.")
  p.add_argument("--time_hidden", type=int, default=256, help="Timing: hidden size.")
  p.add_argument("--time_vocab", type=int, default=8192, help="Timing: vocabulary size.")
  p.add_argument("--time_token_chunk", type=int, default=256, help="Timing: tokens per chunk.")
  p.add_argument("--repeats", type=int, default=5, help="Timing: measured calls per version.")
  return p.parse_args()


def emit(**record) -> None:
  print(json.dumps(record), flush=True)


def make_loss(fn, **kwargs):
  """`−mean(logp) − 0.01·mean(entropy)` of `fn(hidden, unembed, targets, **kwargs)`."""

  def loss(hidden, unembed, targets):
    logp, entropy = fn(hidden, unembed, targets, **kwargs)
    return -logp.mean() - 0.01 * entropy.mean()

  return loss


def make_step(fn, *, backward: bool = True, **kwargs):
  """jit(loss), or jit(value_and_grad(loss)) w.r.t. (hidden, unembed) when `backward`."""
  loss = make_loss(fn, **kwargs)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)) if backward else loss)


def peak_temp_bytes(step, *args) -> int:
  return int(step.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def memory_figures(args: argparse.Namespace, dtype: str) -> None:
  shape = dict(
      tokens=args.batch * args.time,
      hidden=args.hidden,
      vocab=args.vocab,
      dtype=dtype,
      backend=jax.default_backend(),
  )
  inputs = (
      jax.ShapeDtypeStruct((args.batch, args.time, args.hidden), jnp.dtype(dtype)),
      jax.ShapeDtypeStruct((args.hidden, args.vocab), jnp.dtype(dtype)),
      jax.ShapeDtypeStruct((args.batch, args.time), jnp.int32),
  )
  for backward, figure in (
      (False, "peak_temp_bytes_forward"),
      (True, "peak_temp_bytes_forward_backward"),
  ):
    naive = peak_temp_bytes(make_step(token_stats.naive_logp_entropy, backward=backward), *inputs)
    for setting in args.vocab_chunks.split(","):
      vocab_chunk = None if setting.strip().lower() == "none" else int(setting)
      chunked = peak_temp_bytes(
          make_step(
              token_stats.token_logp_entropy,
              backward=backward,
              token_chunk=args.token_chunk,
              vocab_chunk=vocab_chunk,
          ),
          *inputs,
      )
      emit(
          benchmark="token_stats",
          figure=figure,
          ours=chunked,
          baseline=naive,
          ratio=chunked / naive,
          unit="bytes",
          ours_gib=chunked / 2**30,
          baseline_gib=naive / 2**30,
          target="<= 0.125",
          token_chunk=args.token_chunk,
          vocab_chunk=vocab_chunk,
          **shape,
      )


def median_seconds(step, inputs, repeats: int) -> float:
  jax.block_until_ready(step(*inputs))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(*inputs))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def timing_figures(args: argparse.Namespace) -> None:
  keys = jax.random.split(jax.random.key(0), 3)
  n, d, v = args.time_tokens, args.time_hidden, args.time_vocab
  inputs = (
      jax.random.normal(keys[0], (n, d), jnp.float32),
      jax.random.normal(keys[1], (d, v), jnp.float32) / d**0.5,
      jax.random.randint(keys[2], (n,), 0, v),
  )
  naive = median_seconds(make_step(token_stats.naive_logp_entropy), inputs, args.repeats)
  chunked = median_seconds(
      make_step(token_stats.token_logp_entropy, token_chunk=args.time_token_chunk),
      inputs,
      args.repeats,
  )
  emit(
      benchmark="token_stats",
      figure="forward_backward_step_seconds_median",
      ours=chunked,
      baseline=naive,
      ratio=chunked / naive,
      unit="s",
      token_chunk=args.time_token_chunk,
      tokens=n,
      hidden=d,
      vocab=v,
      dtype="float32",
      backend=jax.default_backend(),
      repeats=args.repeats,
  )


def main() -> None:
  args = parse_args()
  for dtype in args.dtypes.split(","):
    memory_figures(args, dtype.strip())
  timing_figures(args)


if __name__ == "__main__":
  main()
