r"""Rollouts at RL's lengths: a long tail of response lengths, a model whose matmuls dominate.

  python benchmarks/long_tail_sampler.py               # every figure, about 12 minutes on 2 cores
  python benchmarks/long_tail_sampler.py --figures=refill --repeats=3

The `long_tail` shape: a random Qwen2 (vocab 4096, hidden 512, 4 layers, 8 query and 2 KV
heads, MLP 1536, float32), 32 prompts x 8 samples (256 rows), prompts of 32-64 tokens, up to
512 new tokens (`--prompts`, `--new_tokens` and `--decode_rows` change the sizes). The
unembedding is scaled down so the next-token distribution is near uniform, and 4 x vocab /
new_tokens token ids are stop tokens, so each step stops with probability 1/128: lengths
are geometric with mean about 125 (a quarter of the budget), median about 89, and about 2% of
rows truncated at 512, the right-skewed shape of RL responses. Each side counts the tokens it
generated (up to and including the stop token).

One JSON line per figure, each with the CPU facts of `benchmarks/machine.py`:

* `refill`: ours with a decode batch of 64 rows that refills finished rows, against the same
  sampler with `refill=False` (passes of 8 whole prompts, each decoded until its longest
  completion ends, finished rows compacted away). Both draw the same samples (same key), so
  the ratio rests on work not done: `slot_steps` counts the decode batch slots computed
  (rows x steps over every segment) and `slot_utilisation` the share of them that produced a
  token.
* `generate`: ours at its defaults (all 256 rows at once, finished rows compacted away), against
  transformers `generate(do_sample=True)` with the same stop ids, torch at `--threads`.
* `generate_batch`: ours with the 64-row refilling batch, against transformers' continuous
  batching `generate_batch` (the pinned transformers has it), torch at `--threads`.
* `decode_bandwidth`: one decode segment at Qwen2.5-0.5B's shape (vocab 151 936, hidden 896,
  24 layers, tied embeddings, float32), 4 and 32 rows at 64 cached tokens + 16 steps: the
  bytes a step must read (every param once, the whole KV cache) per second, as a fraction of
  the measured memory bandwidth (`machine.memory_bandwidth`), the bound a decode step cannot
  beat; and `roofline_fraction`, the larger of that bound and the step's matmul FLOPs at the
  measured matmul peak (`machine.matmul_peak_flops`), over the measured step. At 32 rows a
  float32 step on a CPU is compute-bound (`bound`), so only the roofline fraction can be high.

`speedup` > 1 means ours is faster (medians of `--repeats` calls after a warm-up call).
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
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import machine
from entropix_rl import sampling
from entropix_rl.models import ModelConfig, decoder

FIGURES = ("refill", "generate", "generate_batch", "decode_bandwidth")
LONG_TAIL = dict(
    vocab=4096,
    hidden=512,
    layers=4,
    heads=8,
    kv_heads=2,
    intermediate=1536,
    prompts=32,
    samples=8,
    prompt_len=64,
    new_tokens=512,
    decode_rows=64,
)
QWEN05 = dict(
    vocab=151936, hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, rows=(4, 32)
)


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--figures", default=",".join(FIGURES), help=f"Comma-separated: {FIGURES}.")
  p.add_argument("--repeats", type=int, default=3, help="Measured calls per side.")
  p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads.")
  for name in ("prompts", "new_tokens", "decode_rows"):
    p.add_argument(f"--{name}", type=int, default=LONG_TAIL[name], help=f"long_tail {name}.")
  args = p.parse_args()
  LONG_TAIL.update(prompts=args.prompts, new_tokens=args.new_tokens, decode_rows=args.decode_rows)
  for name in args.figures.split(","):
    if name not in FIGURES:
      raise SystemExit(f"--figures: unknown figure {name!r}; allowed: {FIGURES}")
  return args


def model_config(shape: dict, tie: bool = False) -> ModelConfig:
  return ModelConfig(
      vocab_size=shape["vocab"],
      hidden_size=shape["hidden"],
      num_layers=shape["layers"],
      num_heads=shape["heads"],
      num_kv_heads=shape["kv_heads"],
      head_dim=shape["hidden"] // shape["heads"],
      intermediate_size=shape["intermediate"],
      max_position_embeddings=2048,
      tie_embeddings=tie,
      qkv_bias=True,
  )


def near_uniform_params(cfg: ModelConfig) -> dict:
  """Random params whose next-token distribution is near uniform (unembedding scaled down)."""
  params = decoder.init_params(cfg, jax.random.key(0), init_std=0.08)
  name = "embed" if cfg.tie_embeddings else "lm_head"
  return dict(params, **{name: params[name] * 0.02})


def prompts(shape: dict) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
  """Left-padded prompts `[P, W]`, their lengths, and the stop ids."""
  rng = np.random.default_rng(0)
  p, width = shape["prompts"], shape["prompt_len"]
  stops = tuple(range(3, 3 + 4 * shape["vocab"] // shape["new_tokens"]))  # P(stop) = 4 / budget
  lengths = rng.integers(width // 2, width + 1, size=p)
  tokens = rng.integers(3 + len(stops), shape["vocab"], size=(p, width))
  real = np.arange(width)[None, :] >= (width - lengths)[:, None]
  return np.where(real, tokens, 0).astype(np.int32), lengths, stops


def line(**fields) -> None:
  print(json.dumps(dict(fields, **machine.cpu_facts())), flush=True)


class SlotCounter:
  """Counts decode slot-steps (batch rows x loop iterations) by wrapping `compiled_decode`."""

  def __init__(self):
    self.slot_steps = 0
    self._original = sampling.compiled_decode

  def __enter__(self):
    def counted(*args, **kwargs):
      fn = self._original(*args, **kwargs)

      def call(params, state, *rest):
        before = np.asarray(state.step)
        rows = before.shape[0]
        state, out = fn(params, state, *rest)
        self.slot_steps += rows * int((np.asarray(state.step) - before).max())
        return state, out

      return call

    sampling.compiled_decode = counted
    return self

  def __exit__(self, *exc):
    sampling.compiled_decode = self._original


def ours(shape: dict, sampler_cfg: sampling.SamplerConfig, repeats: int) -> dict:
  cfg = model_config(shape)
  params = near_uniform_params(cfg)
  tokens, lengths, _ = prompts(shape)
  generated = []

  def call():
    rollout = sampling.sample(cfg, params, tokens, lengths, jax.random.key(1), sampler_cfg)
    generated.append(int(np.asarray(rollout.lengths).sum()))

  seconds = machine.median_seconds(call, repeats=repeats)
  with SlotCounter() as counter:
    call()
  return dict(seconds=seconds, tokens=generated[-1], slot_steps=counter.slot_steps)


def sampler_config(shape: dict, **changes) -> sampling.SamplerConfig:
  _, _, stops = prompts(shape)
  return sampling.SamplerConfig(
      max_new_tokens=shape["new_tokens"], num_samples=shape["samples"], stop_ids=stops, **changes
  )


def refill_figure(args: argparse.Namespace) -> None:
  shape = LONG_TAIL
  rows = shape["decode_rows"]
  refill = ours(shape, sampler_config(shape, max_decode_rows=rows), args.repeats)
  passes = ours(shape, sampler_config(shape, max_decode_rows=rows, refill=False), args.repeats)
  assert refill["tokens"] == passes["tokens"], "refill and passes must draw the same samples"
  line(
      benchmark="sampler_refill",
      shape="long_tail",
      baseline_name=f"passes of whole prompts (refill=False), {rows}-row batch",
      speedup=passes["seconds"] / refill["seconds"],
      ours_seconds=refill["seconds"],
      baseline_seconds=passes["seconds"],
      tokens=refill["tokens"],
      mean_length=refill["tokens"] / (shape["prompts"] * shape["samples"]),
      ours_slot_steps=refill["slot_steps"],
      baseline_slot_steps=passes["slot_steps"],
      ours_slot_utilisation=refill["tokens"] / refill["slot_steps"],
      baseline_slot_utilisation=passes["tokens"] / passes["slot_steps"],
      repeats=args.repeats,
      **shape,
  )


def torch_model(shape: dict):
  """The same architecture in transformers, random, near-uniform next-token distribution."""
  import torch
  from transformers import Qwen2Config, Qwen2ForCausalLM

  config = Qwen2Config(
      vocab_size=shape["vocab"],
      hidden_size=shape["hidden"],
      num_hidden_layers=shape["layers"],
      num_attention_heads=shape["heads"],
      num_key_value_heads=shape["kv_heads"],
      intermediate_size=shape["intermediate"],
      max_position_embeddings=2048,
      tie_word_embeddings=False,
      eos_token_id=2,
      pad_token_id=0,
  )
  torch.manual_seed(0)
  model = Qwen2ForCausalLM(config).to(torch.float32).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" not in name:
        param.normal_(0.0, 0.08)
    model.lm_head.weight.mul_(0.02)
  return model


def torch_figure(args: argparse.Namespace, continuous: bool) -> None:
  import torch
  from transformers import GenerationConfig

  from benchmarks.sampler import generated_tokens

  torch.set_num_threads(args.threads)
  shape = LONG_TAIL
  tokens, lengths, stops = prompts(shape)
  model = torch_model(shape)
  width, n, new = shape["prompt_len"], shape["samples"], shape["new_tokens"]
  counts = []
  if continuous:
    requests = [row[width - length :].tolist() for row, length in zip(tokens, lengths)]
    gen_cfg = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=None,
        top_p=None,
        max_new_tokens=new,
        num_return_sequences=n,
        eos_token_id=list(stops),
        pad_token_id=0,
    )

    def theirs():
      out = model.generate_batch(requests, generation_config=gen_cfg, progress_bar=False)
      counts.append(generated_tokens([o.generated_tokens for o in out.values()], stops))

    mine = sampler_config(shape, max_decode_rows=shape["decode_rows"])
    name = "transformers generate_batch (continuous batching)"
  else:
    ids = torch.from_numpy(tokens.astype(np.int64))
    mask = torch.from_numpy((tokens != 0).astype(np.int64))

    def theirs():
      with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=None,
            top_p=None,
            max_new_tokens=new,
            num_return_sequences=n,
            eos_token_id=list(stops),
            pad_token_id=0,
        )
      counts.append(generated_tokens(out[:, width:].tolist(), stops))

    mine = sampler_config(shape)
    name = "transformers generate"
  theirs_s = machine.median_seconds(theirs, repeats=args.repeats)
  ours_run = ours(shape, mine, args.repeats)
  ours_rate = ours_run["tokens"] / ours_run["seconds"]
  theirs_rate = statistics.median(counts) / theirs_s
  line(
      benchmark="sampler",
      shape="long_tail",
      baseline_name=name,
      speedup=ours_rate / theirs_rate,
      unit="generated tokens/s",
      ours=ours_rate,
      baseline=theirs_rate,
      ours_mean_length=ours_run["tokens"] / (shape["prompts"] * n),
      baseline_mean_length=statistics.median(counts) / (shape["prompts"] * n),
      ours_max_decode_rows=mine.max_decode_rows,
      repeats=args.repeats,
      threads=args.threads,
      **shape,
  )


def decode_bandwidth_figure(args: argparse.Namespace) -> None:
  shape, prompt, segment = QWEN05, 64, 16
  cfg = model_config(shape, tie=True)
  params = near_uniform_params(cfg)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  bandwidth = machine.memory_bandwidth()
  peak = machine.matmul_peak_flops()
  sampler_cfg = sampling.SamplerConfig(max_new_tokens=segment + 1, decode_segment=segment)
  prefill = sampling.compiled_prefill(cfg, sampler_cfg)
  decode = sampling.compiled_decode(cfg, sampler_cfg, segment)
  for rows in shape["rows"]:
    tokens = jnp.ones((rows, prompt), jnp.int32)
    keys = jnp.zeros((rows, 2), jnp.uint32)
    ids = jnp.arange(rows, dtype=jnp.int32)
    times = []
    for _ in range(args.repeats + 1):
      state, _ = prefill(params, tokens, tokens > 0, keys, ids, jnp.float32(1.0), None)
      jax.block_until_ready(state)
      start = time.perf_counter()
      jax.block_until_ready(decode(params, state, jnp.float32(1.0), None))
      times.append(time.perf_counter() - start)
    step_s = statistics.median(times[1:]) / segment
    slots = prompt + segment + 1
    kv_bytes = 2 * cfg.num_layers * rows * cfg.num_kv_heads * slots * cfg.head_dim * 4
    # Matmul FLOPs of a step: every param once per row (2 FLOPs per multiply-add), plus the
    # attention scores and values over the cache (the embedding lookup is not a matmul).
    matmul_params = param_bytes // 4 - (
        0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size
    )
    flops = (
        2 * rows * matmul_params + 4 * cfg.num_layers * rows * cfg.num_heads * slots * cfg.head_dim
    )
    bound_s = max((param_bytes + kv_bytes) / bandwidth, flops / peak)
    line(
        benchmark="efficiency",
        figure="decode_bandwidth_fraction",
        shape="qwen2.5-0.5b",
        value=(param_bytes + kv_bytes) / step_s / bandwidth,
        target=">= 0.5",
        roofline_fraction=bound_s / step_s,
        bound="memory" if (param_bytes + kv_bytes) / bandwidth >= flops / peak else "compute",
        step_seconds=step_s,
        bytes_per_step=param_bytes + kv_bytes,
        flops_per_step=flops,
        measured_bandwidth_gb_s=bandwidth / 1e9,
        measured_matmul_peak_gflop_s=peak / 1e9,
        rows=rows,
        cached_tokens=prompt,
        repeats=args.repeats,
    )


def main() -> None:
  args = parse_args()
  figures = args.figures.split(",")
  if "refill" in figures:
    refill_figure(args)
  if "generate" in figures:
    torch_figure(args, continuous=False)
  if "generate_batch" in figures:
    torch_figure(args, continuous=True)
  if "decode_bandwidth" in figures:
    decode_bandwidth_figure(args)


if __name__ == "__main__":
  main()
