r"""Packed against padded update at paper scale: compiled FLOPs and bytes, and a roofline time.

  python benchmarks/packing_flops.py [--config=configs/qwen25_7b.py:grpo] [--devices=16 \
      --mesh=1,4,4 --chip=v5p --budget=20480 --samples=2048 --seed=0]

About 3 minutes on 2 CPU cores. The update's work is its forward/backward micro-steps (and the
no-grad forward passes). This compiles, for the full-size architecture on `--devices`
simulated CPU devices (abstract inputs, nothing allocated), the real functions one micro-step
runs: `update.completion_hidden` (the decoder) and `token_stats.token_logp_entropy` (the
log-probs) under `jax.value_and_grad` with rematerialised layers (in one token chunk and one
vocabulary block: chunking changes memory, not FLOPs, and XLA counts a loop's body once; the
decoder's layer scan is unrolled for the same reason), once on the recipe's padded micro-batch
(`rl.micro_batch_size` rows of `data.max_prompt_len + sampler.max_new_tokens` slots per data
shard) and once on one packed bin of `--budget` tokens per data shard (the same activation
memory as two padded rows at the default). `compiled.cost_analysis()` gives each program's
per-device FLOPs and bytes accessed.

The step's number of micro-steps comes from the length distribution: `--samples` rollouts
(the recipe's 256 prompts x 8) with prompt lengths from a log-normal of median 180 tokens
(DAPO-Math-17k's questions with the chat template; at most `data.max_prompt_len`) and response
lengths from a log-normal (σ = 1) with mean a quarter of `sampler.max_new_tokens` (2048 of
8192) and 3% of responses forced to the cap, clipped there (6% end at the cap at seed 0), the
long tail of the paper's runs. Padded: every mini-batch takes
`rows / (shards x micro_batch_size)` micro-steps; packed: the steps of
`packing.plan_packing` on the sampled lengths of each mini-batch (balanced over the data
shards, first-fit-decreasing).

Attention compiles as `dense` (the blockwise kernel's loops have data-dependent trip counts,
which XLA's cost analysis counts once): a dense bin of B slots computes all B² scores, so the
packed figure also counts attention between different sequences of a bin, which a kernel that
skips masked blocks (splash) does not compute; the packed FLOPs are an upper bound. The
roofline time per step is `max(FLOPs / peak, bytes / HBM bandwidth)` per micro-step, summed
(the chip's datasheet peak). One JSON line per figure.
"""

from __future__ import annotations

import os
import sys

_DEVICES = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--devices=")), 16)
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from unittest import mock  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from entropix_rl import memory, packing, sharding, token_stats  # noqa: E402
from entropix_rl.models import init_params, unembedding  # noqa: E402
from entropix_rl.train import cli, config_dict  # noqa: E402
from entropix_rl.train.config import resolve  # noqa: E402
from entropix_rl.train.update import completion_hidden, predicted_tokens  # noqa: E402

_CONFIG = cli.define_config("configs/qwen25_7b.py:grpo", "Experiment config (a recipe).")
flags.DEFINE_integer("devices", 16, "Simulated CPU devices (read before JAX starts).")
_MESH = flags.DEFINE_string("mesh", "1,4,4", "data,fsdp,tensor sizes.")
_CHIP = flags.DEFINE_enum("chip", "v5p", ["v5p", "v6e", "h100"], "Chip of the roofline.")
_BUDGET = flags.DEFINE_integer("budget", 20480, "Packed tokens per data shard per micro-step.")
_SAMPLES = flags.DEFINE_integer("samples", 2048, "Rollouts per step to sample lengths for.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampled lengths.")

# Datasheet peaks: bf16 dense FLOP/s and HBM bytes/s per chip.
PEAKS = {"v5p": (459e12, 2765e9), "v6e": (918e12, 1640e9), "h100": (989e12, 3350e9)}


def sample_lengths(n: int, prompt_cap: int, response_cap: int, seed: int) -> np.ndarray:
  """`[n, 2]` (prompt, response) token counts (module docstring)."""
  rng = np.random.default_rng(seed)
  prompt = np.clip(rng.lognormal(np.log(180), 0.5, n), 16, prompt_cap).astype(int)
  sigma = 1.0
  mean = response_cap / 4
  response = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, n)
  response[rng.random(n) < 0.03] = response_cap
  response = np.clip(response, 1, response_cap).astype(int)
  return np.stack([prompt, response], axis=1)


def _compile(fn, mesh, *args) -> tuple[dict, float]:
  start = time.perf_counter()
  compiled = sharding.jit_on_mesh(fn, mesh).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {"flops": float(cost["flops"]), "bytes": float(cost["bytes accessed"])}, (
      time.perf_counter() - start
  )


def _whole_model_cost(model, mesh, fn, rows) -> tuple[dict, float]:
  """`cost_analysis()` of `fn(model, params, rows)`. XLA counts a loop's body once, so the
  decoder's layer scan is lowered unrolled here (`jax.lax.scan(..., unroll=True)`)."""
  params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
  params = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      params,
      sharding.param_shardings(model, mesh),
  )
  with mock.patch.object(jax.lax, "scan", functools.partial(jax.lax.scan, unroll=True)):
    return _compile(functools.partial(fn, model), mesh, params, rows)


def main(argv):
  del argv
  config = _CONFIG.value
  data, fsdp, tensor = (int(x) for x in _MESH.value.split(","))
  config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  config = config_dict.typed(config)
  model = memory.qwen25_config("7B").replace(
      attention_impl="dense", param_dtype="bfloat16", compute_dtype="bfloat16"
  )
  stand_in = types.SimpleNamespace(stop_ids=(151643,), pad_id=151643, vocab_size=model.vocab_size)
  exp = resolve(config, tokenizer=stand_in, model=model)
  rl = exp.config.rl
  mesh = sharding.make_mesh(exp.config.mesh)
  shards = sharding.batch_shards(mesh)
  prompt_cap, response_cap = config.data.max_prompt_len, exp.sampler.max_new_tokens
  width, budget, micro = prompt_cap + response_cap, _BUDGET.value, rl.micro_batch_size or 1
  ints = lambda shape: jax.ShapeDtypeStruct(
      shape, jnp.int32, sharding=sharding.batch_sharding(mesh)
  )

  def gradient(model, params, rows):
    def value(p):
      hidden = completion_hidden(model, p, rows, remat=True)
      tokens = hidden.shape[0] * hidden.shape[1]
      logp, _ = token_stats.token_logp_entropy(
          hidden,
          unembedding(model, p),
          predicted_tokens(rows),
          token_chunk=tokens,
          vocab_chunk=None,
          with_entropy=False,
      )
      return logp.sum()

    return jax.value_and_grad(value)(params)

  padded_rows = {
      "tokens": ints((shards * micro, width)),
      "attention_mask": jax.ShapeDtypeStruct(
          (shards * micro, width), bool, sharding=sharding.batch_sharding(mesh)
      ),
      "completion": ints((shards * micro, response_cap)),
  }
  bins = {
      name: ints((shards, budget)) for name in ("tokens", "segment_ids", "positions", "targets")
  }
  padded, padded_s = _whole_model_cost(model, mesh, gradient, padded_rows)
  packed, packed_s = _whole_model_cost(model, mesh, gradient, bins)

  lengths = sample_lengths(_SAMPLES.value, prompt_cap, response_cap, _SEED.value)
  totals = lengths.sum(axis=1)
  minibatch = rl.minibatch_size
  padded_steps = packed_steps = 0
  for start in range(0, len(totals), minibatch):
    chunk = totals[start : start + minibatch]
    mask = np.arange(width)[None] < chunk[:, None]
    plan = packing.plan_packing(jnp.asarray(mask), budget, shards, "--budget")
    padded_steps += len(chunk) // (shards * micro)
    packed_steps += int(plan.steps)
  peak, bandwidth = PEAKS[_CHIP.value]
  roof = lambda cost: max(cost["flops"] / peak, cost["bytes"] / bandwidth)
  padded_flops = padded_steps * padded["flops"]
  packed_flops = packed_steps * packed["flops"]
  common = dict(
      shape=f"qwen2.5-7b, {_SAMPLES.value} rollouts, prompt<= {prompt_cap}, response<= {response_cap}",
      cpu="simulated CPU devices (compilation only)",
      mesh=dict(mesh.shape),
      chip=_CHIP.value,
      budget=budget,
      micro_batch_size=micro,
      mean_prompt=float(lengths[:, 0].mean()),
      mean_response=float(lengths[:, 1].mean()),
      truncated_fraction=float((lengths[:, 1] == response_cap).mean()),
      padded_micro_steps=padded_steps,
      packed_micro_steps=packed_steps,
      compile_s=round(padded_s + packed_s, 1),
  )
  lines = [
      dict(
          benchmark="packed_update_flops",
          baseline_name="padded update (rl.micro_batch_size rows)",
          figure="per-device forward+backward FLOPs of one RL step's micro-steps",
          padded=padded_flops,
          packed=packed_flops,
          flops_ratio=packed_flops / padded_flops,
          speedup=padded_flops / packed_flops,
      ),
      dict(
          benchmark="packed_update_bytes",
          baseline_name="padded update (rl.micro_batch_size rows)",
          figure="per-device bytes accessed of one RL step's micro-steps",
          padded=padded_steps * padded["bytes"],
          packed=packed_steps * packed["bytes"],
          bytes_ratio=packed_steps * packed["bytes"] / (padded_steps * padded["bytes"]),
          speedup=padded_steps * padded["bytes"] / (packed_steps * packed["bytes"]),
      ),
      dict(
          benchmark="packed_update_roofline",
          baseline_name="padded update (rl.micro_batch_size rows)",
          figure=f"roofline seconds of one RL step's forward+backward micro-steps on {_CHIP.value}",
          padded_s=padded_steps * roof(padded),
          packed_s=packed_steps * roof(packed),
          speedup=roof(padded) * padded_steps / (roof(packed) * packed_steps),
      ),
  ]
  for line in lines:
    print(json.dumps(dict(line, **common)), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
