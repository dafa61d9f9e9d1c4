r"""Per-device memory of Qwen2.5-7B/32B RL at the paper's settings on TPU slices and GPUs.

  python experiments/scaling_table.py                  # the table in docs/scaling.md
  python experiments/scaling_table.py --train_tokens=10240 --prompts=128

Paper settings (INTERVENTIONS.md §5c, Clip-Cov / KL-Cov recipes): 256 prompts x 8 responses
per step, max response 8192, verl `ppo_max_token_len_per_gpu` 30 720 (7B) / 20 480 (32B)
tokens per training micro-batch per device; the max prompt length is not stated there and is
taken as 2048. No reference model (KL coefficient 0).

Chip counts: a v5p-N slice has N/2 chips (N counts TensorCores, two per chip, one JAX device
per chip); a v6e-N slice has N chips; an H100 node has 8 GPUs.

Mesh rule: tensor = the largest divisor of the chip count that divides `num_kv_heads` (4 for
7B, 8 for 32B), so heads and the KV cache shard over it; fsdp = the remaining chips; data = 1
(pure data parallelism would only replicate params and optimizer state).

Memory model: `entropix_rl.memory.estimate_memory` (formulas in its docstring). "fits" means
the peak of the training and rollout phases, with all 2048 rollouts decoded at once, is at
most 90% of HBM; "max rollouts" is the largest number of sequences that can be decoded at
once next to the resident params and optimizer state (decode the step's 2048 in
ceil(2048 / max) passes); "max train seqs/dev" is the largest training micro-batch, in
full-length (prompt + response) sequences per device, whose update fits (0: not even one;
shorten the sequences or add tensor parallelism).
"""

from __future__ import annotations

import math

from absl import app, flags

from entropix_rl import memory

_PROMPTS = flags.DEFINE_integer("prompts", 256, "Prompts per RL step.")
_GROUP = flags.DEFINE_integer("group_size", 8, "Responses per prompt.")
_PROMPT_LEN = flags.DEFINE_integer("max_prompt_len", 2048, "Max prompt tokens.")
_RESPONSE_LEN = flags.DEFINE_integer("max_response_len", 8192, "Max response tokens.")
_TRAIN_TOKENS = flags.DEFINE_integer(
    "train_tokens", 0, "Training micro-batch tokens per device; 0 = the paper's "
    "ppo_max_token_len_per_gpu (30720 for 7B, 20480 for 32B).")
_TOKEN_CHUNK = flags.DEFINE_integer("token_chunk", 4096, "rl.token_chunk of the token stats.")
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
PAPER_TRAIN_TOKENS = {"7B": 30720, "32B": 20480}


def default_mesh(model_cfg, chips: int) -> dict[str, int]:
  """data 1, tensor = largest divisor of `chips` dividing num_kv_heads, fsdp the rest."""
  tensor = max(t for t in range(1, model_cfg.num_kv_heads + 1)
               if chips % t == 0 and model_cfg.num_kv_heads % t == 0)
  return {"data": 1, "fsdp": chips // tensor, "tensor": tensor}


def max_train_seqs(model_cfg, mesh: dict[str, int], seq_len: int, hbm: int,
                   limit: int = 64) -> int:
  """Most full-length sequences per device in one training micro-batch within the headroom."""
  best = 0
  for seqs in range(1, limit + 1):
    est = memory.estimate_memory(
        model_cfg, mesh_shape=mesh, train_tokens_per_device=seqs * seq_len,
        train_seq_len=seq_len, rollout_batch=1, rollout_len=1, token_chunk=_TOKEN_CHUNK.value)
    if est.train_peak > _HEADROOM.value * hbm:
      break
    best = seqs
  return best


def table_rows(sizes=("7B", "32B")) -> list[list[str]]:
  """One row per (model, slice): mesh, GiB per device of each component, fit."""
  rollout_batch = _PROMPTS.value * _GROUP.value
  seq_len = _PROMPT_LEN.value + _RESPONSE_LEN.value
  rows = []
  for size in sizes:
    cfg = memory.qwen25_config(size)
    tokens = _TRAIN_TOKENS.value or PAPER_TRAIN_TOKENS[size]
    for name, kind, chips in SLICES:
      mesh = default_mesh(cfg, chips)
      est = memory.estimate_memory(
          cfg, mesh_shape=mesh, train_tokens_per_device=tokens, train_seq_len=seq_len,
          rollout_batch=rollout_batch, rollout_len=seq_len, token_chunk=_TOKEN_CHUNK.value)
      hbm = memory.device_hbm_bytes(kind)
      max_batch = memory.max_rollout_batch(cfg, est, mesh_shape=mesh, rollout_len=seq_len,
                                           hbm_bytes=hbm, headroom=_HEADROOM.value)
      max_seqs = max_train_seqs(cfg, mesh, seq_len, hbm)
      passes = math.ceil(rollout_batch / max_batch) if max_batch else 0
      g = est.as_gib()
      rows.append([
          f"Qwen2.5-{size}", name, str(chips), f"{hbm / memory.GIB:.0f}",
          f"{mesh['data']}x{mesh['fsdp']}x{mesh['tensor']}", f"{tokens}",
          f"{g['params']:.1f}", f"{g['grads']:.1f}", f"{g['optimizer']:.1f}",
          f"{g['activations']:.1f}", f"{g['kv_cache']:.1f}", f"{g['total']:.1f}",
          "yes" if est.fits(hbm, _HEADROOM.value) else "no",
          f"{max_batch} ({passes} pass{'es' if passes != 1 else ''})" if max_batch else "0",
          str(max_seqs),
      ])
  return rows


HEADER = ["model", "slice", "chips", "HBM GiB", "mesh d x f x t", "train tokens/dev",
          "params", "grads", "optim (fp32 m,v)", "activations", "KV (all rollouts)", "total",
          "fits", "max rollouts at once (passes)", "max train seqs/dev"]


def markdown(rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(f"Per-device GiB; {_PROMPTS.value} prompts x {_GROUP.value} responses, prompt <= "
        f"{_PROMPT_LEN.value}, response <= {_RESPONSE_LEN.value}, headroom "
        f"{_HEADROOM.value:.0%} of HBM, bf16 params, AdamW moments in float32.\n")
  print(markdown(table_rows()))


if __name__ == "__main__":
  app.run(main)
