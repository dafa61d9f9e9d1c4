"""Padding-free micro-batches: rows packed into bins of a token budget per data shard.

A rollout row is a left-padded prompt and a right-padded completion, `W = P + C` slots of
which only `n_r` are real. Packing lays the real tokens of several rows side by side in a bin
of `budget` slots, each row a segment with its own id and positions restarting at 0, so a
forward pass computes real tokens instead of padding (verl's `use_remove_padding` with
`ppo_max_token_len_per_gpu`; tunix's `max_seq_token_per_tpu`). Attention never crosses a
segment boundary (`models.attention`), so every token's hidden state, log-prob and entropy are
those of its own row.

The plan is deterministic and balanced:

1. rows are ranked by length, longest first (ties by row index), and dealt to the S data
   shards in snake order (0, 1, ..., S-1, S-1, ..., 0), so every shard gets R / S rows and
   nearly the same number of tokens;
2. each shard packs its rows first-fit-decreasing: a row goes to the first bin with room.

The micro-steps are the bins: step k computes bin k of every shard, and runs
`steps = max over shards of the bins in use` times (a dynamic trip count, as verl all-reduces
its number of micro-batches). First fit leaves at most one bin half empty, so a shard never
needs more than `2·Σn / budget + 1` bins; the arrays hold that many (or R / S, if fewer).

Outputs come back per completion token, `[R, C]` in the rows' own order: whatever the loss
does with them (every aggregation mode, every intervention) sees the layout of the unpacked
update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from entropix_rl import sharding

Tree = Any


@flax.struct.dataclass
class PackPlan:
  """Where the real tokens of R rows sit among S shards × `bins` bins of `budget` slots.

  Attributes:
    shard: `[R]` int32, the data shard that computes the row.
    bin: `[R]` int32, the row's bin on that shard: the micro-step that computes it.
    start: `[R]` int32, the slot of the row's first real token in its bin.
    first: `[R]` int32, the index of the row's first real token in its padded row.
    steps: int32 scalar, the bins in use on the fullest shard (micro-steps to run).
    shards, bins, budget: S, bins per shard, slots per bin (static).
  """

  shard: jax.Array
  bin: jax.Array
  start: jax.Array
  first: jax.Array
  steps: jax.Array
  shards: int = flax.struct.field(pytree_node=False)
  bins: int = flax.struct.field(pytree_node=False)
  budget: int = flax.struct.field(pytree_node=False)


def bin_capacity(rows_per_shard: int, width: int, budget: int) -> int:
  """Bins a shard may need: first fit leaves at most one bin at most half full, so
  `bins < 2·tokens / budget + 1`, with `tokens <= rows · width`; never more than the rows."""
  return min(rows_per_shard, 2 * rows_per_shard * width // budget + 1)


def snake_deal(lengths: jax.Array, shards: int) -> jax.Array:
  """`[S, R / S]` row indices: rows longest first, dealt to the shards in snake order.

  Args:
    lengths: `[R]` real tokens per row, R a multiple of `shards`.

  Returns:
    Row `s` lists shard s's rows, longest first.
  """
  r = lengths.shape[0]
  order = jnp.argsort(-lengths, stable=True).reshape(r // shards, shards)
  order = jnp.where((jnp.arange(r // shards) % 2 == 1)[:, None], order[:, ::-1], order)
  return order.T


def first_fit(lengths: jax.Array, bins: int, budget: int) -> tuple[jax.Array, jax.Array]:
  """First fit of items in the given order into `bins` bins of `budget` slots.

  Args:
    lengths: `[n]` item sizes, each at most `budget`, in packing order (longest first makes it
      first-fit-decreasing).

  Returns:
    `(bin [n], start [n])`, int32: each item's bin and its first slot there.
  """

  def place(fill, length):
    chosen = jnp.argmax(fill + length <= budget).astype(jnp.int32)
    return fill.at[chosen].add(length), (chosen, fill[chosen])

  _, (chosen, start) = jax.lax.scan(place, jnp.zeros((bins,), jnp.int32), lengths)
  return chosen, start


def plan_packing(attention_mask: jax.Array, budget: int, shards: int, what: str) -> PackPlan:
  """The packing of rows whose real tokens are one contiguous span each (module docstring).

  Args:
    attention_mask: `[R, W]` bool, True at real tokens; R a multiple of `shards`.
    budget: slots per bin, at least W.
    shards: the data shards (`sharding.batch_shards`).
    what: the config field that set `budget`, for the error.

  Raises:
    ValueError: naming `what` when a row is wider than the budget.
  """
  chex.assert_rank(attention_mask, 2)
  r, width = attention_mask.shape
  if budget < width:
    raise ValueError(
        f"{what}={budget} is shorter than one row of this batch ({width} tokens: the prompt "
        f"width + the completion width); allowed: 0 (no packing) or >= {width}"
    )
  lengths = attention_mask.sum(axis=1, dtype=jnp.int32)
  dealt = snake_deal(lengths, shards)  # [S, R/S]
  bins = bin_capacity(r // shards, width, budget)
  chosen, start = jax.vmap(lambda rows: first_fit(lengths[rows], bins, budget))(dealt)
  to_rows = (
      lambda per_shard: jnp.zeros((r,), jnp.int32).at[dealt.reshape(-1)].set(per_shard.reshape(-1))
  )
  shard_of = jnp.broadcast_to(jnp.arange(shards, dtype=jnp.int32)[:, None], dealt.shape)
  return PackPlan(
      shard=to_rows(shard_of),
      bin=to_rows(chosen),
      start=to_rows(start),
      first=jnp.argmax(attention_mask, axis=1).astype(jnp.int32),
      steps=chosen.max() + 1,
      shards=shards,
      bins=bins,
      budget=budget,
  )


def pack(plan: PackPlan, tokens: jax.Array, attention_mask: jax.Array) -> dict[str, jax.Array]:
  """The bins: `[S, bins, budget]` arrays `tokens`, `segment_ids` (row index + 1; 0 at empty
  slots), `positions` (from 0 per row) and `targets` (the next token of the same row, else 0).

  Args:
    tokens, attention_mask: `[R, W]`, as planned.
  """
  r, width = tokens.shape
  size = plan.shards * plan.bins * plan.budget
  j = jnp.arange(width, dtype=jnp.int32)[None, :]
  slot = plan.start[:, None] + j - plan.first[:, None]
  flat = ((plan.shard * plan.bins + plan.bin)[:, None] * plan.budget) + slot
  flat = jnp.where(attention_mask, flat, size).reshape(-1)  # out of range: dropped
  scatter = lambda values: (
      jnp.zeros((size,), jnp.int32)
      .at[flat]
      .set(values.reshape(-1).astype(jnp.int32), mode="drop")
      .reshape(plan.shards, plan.bins, plan.budget)
  )
  segment_ids = scatter(jnp.broadcast_to(jnp.arange(1, r + 1)[:, None], (r, width)))
  packed_tokens = scatter(tokens)
  shift = lambda x: jnp.pad(x[..., 1:], ((0, 0), (0, 0), (0, 1)))
  same_row = (shift(segment_ids) == segment_ids) & (segment_ids > 0)
  return {
      "tokens": packed_tokens,
      "segment_ids": segment_ids,
      "positions": scatter(jnp.broadcast_to(j, (r, width)) - plan.first[:, None]),
      "targets": jnp.where(same_row, shift(packed_tokens), 0),
  }


def step_bins(bins: dict[str, jax.Array], k: jax.Array) -> dict[str, jax.Array]:
  """Micro-step k's `[S, budget]` bins (bin k of every shard)."""
  return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, k, axis=1, keepdims=False), bins)


def unpack(
    plan: PackPlan,
    values: jax.Array,
    k: jax.Array,
    attention_mask: jax.Array,
    fill: jax.Array,
) -> jax.Array:
  """Per-slot values of micro-step k back to the rows' completion tokens.

  Args:
    values: `[S, budget]`, the value at a slot belongs to the token that slot predicts (its
      `targets` entry).
    attention_mask: `[R, W]`, as planned.
    fill: `[R, C]`, kept where step k has no value: rows of other steps and padding.

  Returns:
    `[R, C]`: at completion token c of row r (index `j = W − C + c` of the row), the value
    of the slot holding token j − 1 when row r is in step k and token j is real, else `fill`.
  """
  c = fill.shape[1]
  prompt_width = attention_mask.shape[1] - c
  offset = prompt_width - 1 + jnp.arange(c, dtype=jnp.int32)[None, :]
  slot = jnp.clip(plan.start[:, None] + offset - plan.first[:, None], 0, plan.budget - 1)
  here = (plan.bin == k)[:, None] & attention_mask[:, prompt_width:]
  return jnp.where(here, values[plan.shard[:, None], slot], fill)


def map_packed(
    fn: Callable[[dict[str, jax.Array]], Tree],
    rows: dict[str, jax.Array],
    *,
    budget: int,
    what: str,
    mesh: Mesh | None = None,
) -> Tree:
  """`fn` over the packed bins of `rows`, one bin per data shard per step (no gradient through
  the loop), its outputs back on the completion tokens.

  Args:
    fn: maps one step's bins (`tokens`, `segment_ids`, `positions`, `targets`, each
      `[S, budget]`) to a pytree of `[S, budget]` per-slot values.
    rows: `tokens`, `attention_mask [R, W]` and `completion [R, C]`.
    budget, what: the token budget and the config field that set it.
    mesh: the mesh, to keep each shard's bins on its devices.

  Returns:
    The pytree of `fn`, each leaf `[R, C]`: 0 at padding.
  """
  mask = rows["attention_mask"].astype(bool)
  plan = plan_packing(mask, budget, sharding.batch_shards(mesh), what)
  bins = sharding.constrain_rows(pack(plan, rows["tokens"], mask), mesh)
  view = lambda k: sharding.constrain_rows(step_bins(bins, k), mesh)
  width = rows["completion"].shape
  out = jax.tree.map(lambda s: jnp.zeros(width, s.dtype), jax.eval_shape(fn, view(0)))

  def step(k, out):
    values = fn(view(k))
    return jax.tree.map(lambda o, v: unpack(plan, v, k, mask, o), out, values)

  return jax.lax.fori_loop(0, plan.steps, step, out)
