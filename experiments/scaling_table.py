r"""Plans Qwen2.5 RL at the paper's settings on TPU slices and GPUs with the analytic model.

  python experiments/scaling_table.py                  # the planner table in docs/scaling.md
  python experiments/scaling_table.py --prompts=128 --max_response_len=4096

Paper settings (Cui et al. 2025 recipes, docs/scaling.md): 256 prompts x 8 responses per step,
max response 8192; the max prompt length is not stated in the recipes and is taken as 2048.
No reference model (KL coefficient 0).

Chip counts: a v5p-N slice has N/2 chips (N counts TensorCores, two per chip, one JAX device
per chip); a v6e-N slice has N chips; an H100 node has 8 GPUs.

Mesh rule: tensor = the largest divisor of the chip count that divides `num_kv_heads` (4 for
7B, 8 for 32B), so heads and the KV cache shard over it; fsdp = the remaining chips; data = 1.

For each slice the table picks the knobs a config sets: the largest `rl.micro_batch_size`
(sequences per device per forward/backward, at most 4, dividing each device's share of a
mini-batch) whose update fits, and the largest
`sampler.max_decode_rows` (a power of two) whose sampling pass fits, with the passes a step
then needs. Memory model: `entropix_rl.memory.estimate_memory` (its docstring has the
formulas; `benchmarks/memory.py` compares it with compiled programs). "fits" means both
phases at those knobs are at most 90% of HBM.
"""

from __future__ import annotations

import math

from absl import app, flags

from entropix_rl import memory

_PROMPTS = flags.DEFINE_integer("prompts", 256, "Prompts per RL step.")
_GROUP = flags.DEFINE_integer("group_size", 8, "Responses per prompt.")
_PROMPT_LEN = flags.DEFINE_integer("max_prompt_len", 2048, "Max prompt tokens.")
_RESPONSE_LEN = flags.DEFINE_integer("max_response_len", 8192, "Max response tokens.")
_MINIBATCHES = flags.DEFINE_integer("num_minibatches", 8, "Optimizer updates per rollout.")
_TOKEN_CHUNK = flags.DEFINE_integer("token_chunk", 1024, "rl.token_chunk of the token stats.")
_HEADROOM = flags.DEFINE_float("headroom", 0.9, "Fraction of HBM a configuration may use.")

# (slice name, device kind, number of JAX devices).
SLICES = (
    ("v5p-32", "v5p", 16),
    ("v5p-64", "v5p", 32),
    ("v5p-128", "v5p", 64),
    ("v6e-32", "v6e", 32),
    ("v6e-64", "v6e", 64),
    ("v6e-128", "v6e", 128),
    ("v6e-256", "v6e", 256),
    ("8x H100", "h100", 8),
)


def default_mesh(model_cfg, chips: int) -> dict[str, int]:
  """data 1, tensor = largest divisor of `chips` dividing num_kv_heads, fsdp the rest."""
  tensor = max(
      t
      for t in range(1, model_cfg.num_kv_heads + 1)
      if chips % t == 0 and model_cfg.num_kv_heads % t == 0
  )
  return {"data": 1, "fsdp": chips // tensor, "tensor": tensor}


def _estimate(cfg, mesh, micro: int, decode_rows: int):
  return memory.estimate_memory(
      cfg,
      mesh_shape=mesh,
      train_rows_per_device=micro,
      prompt_len=_PROMPT_LEN.value,
      response_len=_RESPONSE_LEN.value,
      rollouts=_PROMPTS.value * _GROUP.value,
      decode_rows=decode_rows,
      group_size=_GROUP.value,
      token_chunk=_TOKEN_CHUNK.value,
  )


def plan(cfg, mesh: dict[str, int], hbm: int) -> tuple[int, int, memory.MemoryEstimate]:
  """(micro_batch_size, max_decode_rows, estimate at those knobs); 0 where nothing fits."""
  shards = mesh["data"] * mesh["fsdp"]
  rollouts = _PROMPTS.value * _GROUP.value
  limit = _HEADROOM.value * hbm
  per_shard = rollouts // _MINIBATCHES.value // shards
  micro = max(
      (
          m
          for m in (1, 2, 3, 4)
          if per_shard % m == 0 and _estimate(cfg, mesh, m, shards).train_peak <= limit
      ),
      default=0,
  )
  rows = max(
      (
          r
          for r in (2**k for k in range(20))
          if r % shards == 0
          and r <= rollouts
          and _estimate(cfg, mesh, max(micro, 1), r).rollout_peak <= limit
      ),
      default=0,
  )
  return micro, rows, _estimate(cfg, mesh, max(micro, 1), max(rows, shards))


def table_rows(sizes=("7B", "32B")) -> list[list[str]]:
  """One row per (model, slice): mesh, knobs, GiB per device of each component, fit."""
  rollouts = _PROMPTS.value * _GROUP.value
  rows = []
  for size in sizes:
    cfg = memory.qwen25_config(size)
    for name, kind, chips in SLICES:
      mesh = default_mesh(cfg, chips)
      hbm = memory.device_hbm_bytes(kind)
      micro, decode_rows, est = plan(cfg, mesh, hbm)
      passes = math.ceil(rollouts / decode_rows) if decode_rows else 0
      g = est.as_gib()
      rows.append(
          [
              f"Qwen2.5-{size}",
              name,
              str(chips),
              f"{hbm / memory.GIB:.0f}",
              f"{mesh['data']}x{mesh['fsdp']}x{mesh['tensor']}",
              str(micro),
              f"{decode_rows} ({passes})" if decode_rows else "0",
              f"{g['params'] + g['optimizer']:.1f}",
              f"{g['grads']:.1f}",
              f"{max(g['activations'], g['no_grad_pass']):.1f}",
              f"{g['kv_cache']:.1f}",
              f"{g['train_peak']:.1f}",
              f"{g['rollout_peak']:.1f}",
              "yes" if micro and decode_rows else "no",
          ]
      )
  return rows


HEADER = [
    "model",
    "slice",
    "chips",
    "HBM GiB",
    "mesh d x f x t",
    "micro_batch_size",
    "max_decode_rows (passes)",
    "params + optim",
    "grads",
    "activations",
    "KV (one pass)",
    "update peak",
    "sampling peak",
    "fits",
]


def markdown(rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(
      f"Per-device GiB; {_PROMPTS.value} prompts x {_GROUP.value} responses, prompt <= "
      f"{_PROMPT_LEN.value}, response <= {_RESPONSE_LEN.value}, headroom "
      f"{_HEADROOM.value:.0%} of HBM, bf16 params and AdamW moments, token_chunk "
      f"{_TOKEN_CHUNK.value}.\n"
  )
  print(markdown(table_rows()))


if __name__ == "__main__":
  app.run(main)
