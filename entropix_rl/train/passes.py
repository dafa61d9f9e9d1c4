"""Teacher-forced passes over rollout rows: the completion tokens' log-probs, entropies and
logit features, and the row chunking that bounds their memory.

`map_row_chunks` runs a function over chunks of rows (`lax.map`), taking from every data
shard its own slice, so a chunk never moves rows between devices and the peak memory of a
no-grad pass follows the chunk, not the rollout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from entropix_rl import sharding, token_stats
from entropix_rl.interventions.registry import TokenFeature
from entropix_rl.models import ModelConfig, forward_hidden, unembedding


def completion_hidden(
    model_cfg: ModelConfig, params: Any, rows: dict, *, remat: bool = False
) -> jax.Array:
  """`[R, C, D]` hidden states that predict each completion token.

  Args:
    rows: `tokens [R, P+C]` (left-padded prompt then completion), `attention_mask [R, P+C]`,
      `completion [R, C]`.
  """
  prompt_len = rows["tokens"].shape[1] - rows["completion"].shape[1]
  hidden, _ = forward_hidden(
      model_cfg, params, rows["tokens"], mask=rows["attention_mask"], remat=remat
  )
  return hidden[:, prompt_len - 1 : -1]


def completion_quantities(
    model_cfg: ModelConfig,
    params: Any,
    rows: dict,
    *,
    temperature: float,
    token_chunk: int,
    with_entropy: bool,
    features: tuple[TokenFeature, ...] = (),
    feature_chunk: int = 256,
    remat: bool = False,
) -> dict[str, Any]:
  """Log-probs, entropies and logit features of the completion tokens under `params`.

  Returns:
    `{"logp": [R, C], "entropy": [R, C] or None, "features": {name: [R, C]}}`, float32, at
    the rollout temperature (logits / T).
  """
  hidden = completion_hidden(model_cfg, params, rows, remat=remat)
  unembed = unembedding(model_cfg, params)
  logp, entropy = token_stats.token_logp_entropy(
      hidden,
      unembed,
      rows["completion"],
      temperature=temperature,
      token_chunk=token_chunk,
      with_entropy=with_entropy,
  )
  values = token_stats.logit_features(
      hidden,
      unembed,
      rows["completion"],
      tuple(f.fn for f in features),
      temperature=temperature,
      token_chunk=feature_chunk,
  )
  return {
      "logp": logp,
      "entropy": entropy if with_entropy else None,
      "features": {f.name: v for f, v in zip(features, values)},
  }


def split_rows(tree: Any, pieces: int, shards: int) -> Any:
  """`[N, ...]` leaves → `[pieces, N / pieces, ...]`, piece j taking slice j of every shard.

  The N rows are laid out as `shards` contiguous blocks (one per data shard); piece j holds
  rows `[j·r, (j+1)·r)` of each block, with `r = N / (shards · pieces)`.
  """

  def split(x):
    n = x.shape[0]
    r = n // (shards * pieces)
    x = x.reshape((shards, pieces, r) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((pieces, shards * r) + x.shape[3:])

  return jax.tree.map(split, tree)


def merge_rows(tree: Any, shards: int) -> Any:
  """The inverse of `split_rows`: `[pieces, M, ...]` → `[pieces · M, ...]`."""

  def merge(x):
    pieces, m = x.shape[:2]
    x = x.reshape((pieces, shards, m // shards) + x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape((pieces * m,) + x.shape[3:])

  return jax.tree.map(merge, tree)


def constrain_rows(tree: Any, mesh: Mesh | None, axis: int = 0) -> Any:
  """Rows (axis `axis`) over data x fsdp on `mesh`; a no-op without a mesh."""
  if mesh is None:
    return tree

  def constrain(x):
    spec = P(*([None] * axis), sharding.BATCH_AXES, *([None] * (x.ndim - axis - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  return jax.tree.map(constrain, tree)


def map_row_chunks(
    fn: Callable[[Any], Any], tree: Any, *, chunk_rows: int, shards: int, mesh: Mesh | None = None
) -> Any:
  """`fn` over chunks of `chunk_rows` rows per data shard, reassembled in row order.

  Args:
    fn: maps a pytree of `[M, ...]` row arrays to a pytree of `[M, ...]` arrays.
    tree: `[N, ...]` row arrays, N a multiple of `shards · chunk_rows`; `chunk_rows = 0`
      processes all rows at once.
    shards: data x fsdp (1 without a mesh).
    mesh: the mesh, to keep each chunk's rows on their devices.
  """
  n = jax.tree.leaves(tree)[0].shape[0]
  pieces = 1 if not chunk_rows else n // (shards * chunk_rows)
  if pieces <= 1:
    return fn(tree)
  chunks = constrain_rows(split_rows(tree, pieces, shards), mesh, axis=1)
  out = jax.lax.map(lambda rows: fn(constrain_rows(rows, mesh)), chunks)
  return constrain_rows(merge_rows(out, shards), mesh)
