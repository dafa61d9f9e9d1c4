r"""The RL update at RL's lengths: packed against padded, and against the machine's matmul peak.

  python benchmarks/long_tail_update.py                 # about 10 minutes on 2 cores
  python benchmarks/long_tail_update.py --prompts=4 --repeats=1

The `long_tail` shape of `benchmarks/long_tail_sampler.py`: a random Qwen2 (vocab 4096, hidden
512, 4 layers, 8 query and 2 KV heads, MLP 1536, float32; blockwise attention in tiles of 192,
which skips the tiles above the causal diagonal and, in packed bins, the tiles between
different sequences, as splash and cuDNN do on accelerators), here 8 prompts x 8 samples (64
rows), prompts of 32-64 tokens (left-padded to 64), completions of geometric length with mean
128 (a quarter of the 512 cap, median about 89, clipped at 512): the lengths the sampler draws.
One GRPO update (`rl_update`: the no-grad behaviour pass, then 4 mini-batches of 16 rows, one
epoch), on the same batch and state, two ways:

* padded: micro-batches of `rl.micro_batch_size` = 8 rows of 64 + 512 tokens
  (`rl.logprob_micro_batch_size` 8 for the behaviour pass);
* packed: the rows' real tokens in bins of `rl.micro_batch_tokens` = 8 x 576 = 4608 tokens
  (`rl.logprob_micro_batch_tokens` the same), the same token budget per forward/backward.

Both give the same loss (asserted). One JSON line per figure, each with the CPU facts of
`benchmarks/machine.py`:

* `update_packing`: `speedup` = padded seconds / packed seconds (medians of `--repeats` calls
  after a warm-up call that compiles); it rests on work not done: `padded_tokens` against
  `valid_tokens`.
* `efficiency` `update_flops_fraction_of_matmul_peak` (one line for each update): the model
  FLOPs on valid tokens per second, as a fraction of a 2048² float32 `jnp.dot` measured in the
  same run (`machine.matmul_peak_flops`). Model FLOPs count the forward of the behaviour pass
  and the forward and backward (2x the forward) of each optimizer step, each forward being
  2 x body params x tokens + 2 x hidden x vocab x completion tokens + the causal attention's
  4 x layers x heads x head_dim x (T(T+1)/2) of a T-token row; the rematerialised forward is
  work the update does but not model FLOPs, as in MFU.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import machine
from benchmarks.long_tail_sampler import LONG_TAIL, line, model_config, near_uniform_params
from entropix_rl import interventions
from entropix_rl.models import ModelConfig
from entropix_rl.train.config import RLConfig
from entropix_rl.train.state import create_train_state
from entropix_rl.train.update import UpdateSpec, jit_rl_update

SAMPLES, MINIBATCHES, ROWS_PER_MICRO = 8, 4, 8
BLOCK = 192  # attention tiles: divide both the padded rows (576) and the bins (4608)


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--prompts", type=int, default=8, help="prompts (x 8 samples)")
  parser.add_argument("--new_tokens", type=int, default=512, help="completion cap")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per side")
  return parser.parse_args()


def long_tail_batch(prompts: int, prompt_width: int, cap: int, vocab: int) -> dict:
  """`prompts x 8` rows in `rl_update`'s layout with long-tailed completion lengths."""
  rng = np.random.default_rng(0)
  n = prompts * SAMPLES
  prompt_lengths = rng.integers(prompt_width // 2, prompt_width + 1, n)
  lengths = np.minimum(rng.geometric(4 / cap, n), cap)
  pmask = np.arange(prompt_width)[None, :] >= (prompt_width - prompt_lengths)[:, None]
  cmask = np.arange(cap)[None, :] < lengths[:, None]
  completion = np.where(cmask, rng.integers(3, vocab, (n, cap)), 0).astype(np.int32)
  prompt = np.where(pmask, rng.integers(3, vocab, (n, prompt_width)), 0).astype(np.int32)
  return {
      "tokens": np.concatenate([prompt, completion], 1),
      "attention_mask": np.concatenate([pmask, cmask], 1),
      "completion": completion,
      "completion_mask": cmask.astype(np.float32),
      "rewards": rng.integers(0, 2, n).astype(np.float32),
      "group_ids": np.repeat(np.arange(prompts), SAMPLES).astype(np.int32),
  }


def model_flops(cfg: ModelConfig, batch: dict, epochs: int = 1) -> float:
  """Model FLOPs of one update of `epochs` epochs on the batch's valid tokens (module
  docstring)."""
  totals = batch["attention_mask"].sum(1).astype(np.float64)
  completions = batch["completion_mask"].sum(1).astype(np.float64)
  body = cfg.num_params(include_embeddings=False)
  attention = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * totals * (totals + 1) / 2
  forward = 2 * body * totals + 2 * cfg.hidden_size * cfg.vocab_size * completions + attention
  return float(forward.sum()) * (1 + 3 * epochs)


def update_fn(cfg: ModelConfig, prompts: int, packed: bool, budget: int):
  micro = (
      dict(micro_batch_tokens=budget, logprob_micro_batch_tokens=budget)
      if packed
      else dict(micro_batch_size=ROWS_PER_MICRO, logprob_micro_batch_size=ROWS_PER_MICRO)
  )
  rl = RLConfig(
      prompts_per_step=prompts,
      group_size=SAMPLES,
      num_minibatches=MINIBATCHES,
      ppo_epochs=1,
      remat=True,
      **micro,
  )
  loss = interventions.resolve_loss_config(interventions.default_loss_config())
  optimizer = optax.adamw(1e-6)
  return jit_rl_update(UpdateSpec(model=cfg, rl=rl, loss=loss), optimizer), optimizer


def time_update(
    cfg: ModelConfig,
    params: dict,
    batch: dict,
    prompts: int,
    packed: bool,
    budget: int,
    repeats: int,
) -> tuple[float, float]:
  """Median seconds of one update (its state copied fresh for each call) and its loss."""
  update, optimizer = update_fn(cfg, prompts, packed, budget)
  start = jax.tree.map(np.array, create_train_state(params, optimizer, jax.random.PRNGKey(1)))
  losses = []

  def call():
    state = jax.tree.map(np.array, start)  # the update donates its state
    _, metrics = update(state, batch)
    losses.append(float(jax.device_get(metrics["loss/loss"])))

  return machine.median_seconds(call, repeats=repeats), losses[-1]


def main() -> None:
  args = parse_args()
  shape = dict(LONG_TAIL, prompts=args.prompts, new_tokens=args.new_tokens)
  cfg = model_config(shape).replace(
      attention_impl="blockwise", attention_block_q=BLOCK, attention_block_k=BLOCK
  )
  params = near_uniform_params(cfg)
  batch = long_tail_batch(args.prompts, shape["prompt_len"], args.new_tokens, cfg.vocab_size)
  budget = ROWS_PER_MICRO * batch["tokens"].shape[1]
  peak = machine.matmul_peak_flops()
  flops = model_flops(cfg, batch)
  seconds, losses = {}, {}
  for packed in (False, True):
    seconds[packed], losses[packed] = time_update(
        cfg, params, batch, args.prompts, packed, budget, args.repeats
    )
  np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4, atol=1e-6)
  valid = int(batch["attention_mask"].sum())
  common = dict(
      shape="long_tail",
      rows=args.prompts * SAMPLES,
      new_tokens=args.new_tokens,
      mean_completion=float(batch["completion_mask"].sum(1).mean()),
      valid_tokens=valid,
      padded_tokens=int(batch["tokens"].size),
      repeats=args.repeats,
  )
  line(
      benchmark="update_packing",
      baseline_name=f"padded micro-batches of {ROWS_PER_MICRO} rows",
      speedup=seconds[False] / seconds[True],
      ours_seconds=seconds[True],
      baseline_seconds=seconds[False],
      micro_batch_tokens=budget,
      **common,
  )
  for packed in (True, False):
    line(
        benchmark="efficiency",
        figure="update_flops_fraction_of_matmul_peak",
        update="packed" if packed else "padded",
        value=flops / seconds[packed] / peak,
        model_flops=flops,
        seconds=seconds[packed],
        matmul_peak_flops=peak,
        **common,
    )


if __name__ == "__main__":
  main()
