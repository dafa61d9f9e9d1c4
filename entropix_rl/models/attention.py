"""Causal self-attention within sequences, with an optional sliding window, in four
implementations chosen by `ModelConfig.attention_impl`.

Every implementation computes, for queries `q [B, T, H, Dh]`, keys/values `k, v [B, T, K, Dh]`
(grouped-query: `H % K == 0`) and segment ids `seg [B, T]` (0 at padding, a sequence's id at
its tokens), the softmax attention in which query `t` sees key `s` iff `seg[b, s] = seg[b, t]`,
`s <= t` and, with a window W, `t - W < s`:

    out[b, t, h] = Σ_s softmax_s(q[b,t,h]·k[b,s,h//G] / √Dh over allowed s) · v[b, s, h//G]

A row of one sequence has segment ids 0/1 (a bool key-padding mask is exactly that); a packed
row holds several sequences side by side (`entropix_rl.packing`), and no attention crosses
their boundaries. Indices count every slot, as transformers' sliding-window masks do; within
one contiguous sequence that is the distance between positions. Padding queries see only
padding keys (at least themselves), so every row stays finite; their outputs never reach a loss.

* `dense`: the `[B, H, T, T]` float32 score matrix, softmax, matmul. Memory quadratic in T.
* `blockwise`: pure JAX flash-style attention (Dao et al. 2022, arXiv 2205.14135): an online
  softmax over key blocks per query block, with a custom VJP that recomputes each block's
  probabilities from the saved row log-sum-exp (FlashAttention-2's backward, arXiv
  2307.08691), so neither pass holds more than a `[block_q, block_k]` tile of scores per
  head. Key blocks above the causal diagonal, or wholly outside the window, are skipped.
  Memory linear in T; runs anywhere.
* `splash`: the TPU Pallas splash-attention kernel (`jax.experimental.pallas.ops.tpu`), its
  `SegmentIds`, the window as a `LocalMask`. TPU only (or Pallas interpret mode, for tests).
* `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, the window as its
  `local_window_size`; rows of one sequence as per-row key lengths, packed rows as a
  `[B, 1, T, T]` same-sequence mask (which the kernel reads as a bias: T² memory per row).
  NVIDIA GPU only, with a bfloat16/float16 compute dtype.
* `auto` picks `splash` on TPU, `cudnn` on GPU with a 16-bit compute dtype (`blockwise`
  otherwise) and `dense` on CPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

ATTENTION_IMPLS = ("auto", "dense", "blockwise", "splash", "cudnn")
_MASKED = float(jnp.finfo(jnp.float32).min)


def resolve_impl(impl: str, compute_dtype: jnp.dtype) -> str:
  """The implementation `impl` names on the current backend (`auto` resolved).

  Raises:
    ValueError: naming `model.attention_impl` for an unknown name, or for a kernel the
      backend does not have.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"model.attention_impl={impl!r}; allowed: {ATTENTION_IMPLS}")
  backend = jax.default_backend()
  if impl == "auto":
    if backend == "tpu":
      return "splash"
    if backend == "gpu":
      return "cudnn" if jnp.dtype(compute_dtype).itemsize == 2 else "blockwise"
    return "dense"
  if impl == "splash" and backend != "tpu":
    raise ValueError(
        f"model.attention_impl='splash' needs a TPU; this backend is {backend!r}. "
        "Use 'blockwise' (any backend), 'dense', or 'auto'."
    )
  if impl == "cudnn" and backend != "gpu":
    raise ValueError(
        f"model.attention_impl='cudnn' needs an NVIDIA GPU; this backend is "
        f"{backend!r}. Use 'blockwise' (any backend), 'dense', or 'auto'."
    )
  return impl


def self_attention(
    impl: str,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    packed: bool = False,
    window: int | None = None,
    block_q: int = 512,
    block_k: int = 512,
) -> jax.Array:
  """Causal self-attention within sequences (module docstring).

  Args:
    impl: a resolved implementation name (`resolve_impl`), not `auto`.
    q: `[B, T, H, Dh]` queries (RoPE applied).
    k, v: `[B, T, K, Dh]` keys and values.
    segment_ids: `[B, T]` int (or a bool mask: False = 0), 0 at padding tokens (never
      attended to by a real token).
    packed: rows may hold several sequences; False promises one contiguous sequence per row
      (what lets `cudnn` use per-row key lengths).
    window: W, query t sees keys s > t - W; None: every earlier key.
    block_q, block_k: tile sizes of `blockwise` and `splash`.

  Returns:
    `[B, T, H, Dh]` in the dtype of `v`.
  """
  seg = segment_ids.astype(jnp.int32)
  if impl == "dense":
    return dense_attention(q, k, v, seg, window=window)
  if impl == "blockwise":
    return blockwise_attention(q, k, v, seg, window=window, block_q=block_q, block_k=block_k)
  if impl == "splash":
    return splash_attention(q, k, v, seg, window=window, block_q=block_q, block_k=block_k)
  if impl == "cudnn":
    return cudnn_attention(q, k, v, seg, window=window, packed=packed)
  raise ValueError(f"model.attention_impl={impl!r}; allowed: {ATTENTION_IMPLS[1:]}")


def _group(q: jax.Array, num_kv_heads: int) -> jax.Array:
  b, t, h, dh = q.shape
  return q.reshape(b, t, num_kv_heads, h // num_kv_heads, dh)


def causal_mask(q_pos: jax.Array, k_pos: jax.Array, window: int | None) -> jax.Array:
  """`[..., Tq, Tk]` bool: query index `q_pos[..., i]` may see key index `k_pos[..., j]`
  (module docstring); leading axes (e.g. a batch of rows at different slots) broadcast."""
  allowed = k_pos[..., None, :] <= q_pos[..., :, None]
  if window is not None:
    allowed &= q_pos[..., :, None] - k_pos[..., None, :] < window
  return allowed


def same_segment(seg_q: jax.Array, seg_k: jax.Array) -> jax.Array:
  """`[B, Tq, Tk]` bool: query and key belong to one sequence (or are both padding)."""
  return seg_q[:, :, None] == seg_k[:, None, :]


def dense_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    window: int | None = None,
) -> jax.Array:
  """The reference: `[B, K, G, T, T]` float32 scores. Shapes as `self_attention`."""
  b, t, h, dh = q.shape
  s = k.shape[1]
  seg = segment_ids.astype(jnp.int32)
  allowed = same_segment(seg, seg) & causal_mask(jnp.arange(t), jnp.arange(s), window)[None]
  scores = (
      jnp.einsum("btkgd,bskd->bkgts", _group(q, k.shape[2]), k, preferred_element_type=jnp.float32)
      * dh**-0.5
  )
  scores = jnp.where(allowed[:, None, None], scores, _MASKED)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, dh)


def _tiles(
    q: jax.Array, k: jax.Array, v: jax.Array, seg: jax.Array, bq: int, bk: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Pads T to a multiple of both tile sizes (padded slots are segment 0, padding)."""
  t = q.shape[1]
  step = math.lcm(bq, bk)
  pad = (-t) % step
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
    seg = jnp.pad(seg, ((0, 0), (0, pad)))
  return q, k, v, seg


def blockwise_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    window: int | None = None,
    block_q: int = 512,
    block_k: int = 512,
) -> jax.Array:
  """Flash-style attention in pure JAX (module docstring). Shapes as `self_attention`.

  Forward temporaries per query tile: `[B, K, G, block_q, block_k]` float32 scores and a
  `[B, K, G, block_q, Dh]` float32 accumulator. Saved for the backward pass: q, k, v, the
  output and the `[B, K, G, T]` row log-sum-exp.
  """
  b, t, h, dh = q.shape
  bq, bk = min(block_q, t), min(block_k, t)
  qp, kp, vp, segp = _tiles(q, k, v, segment_ids.astype(jnp.int32), bq, bk)
  out = _blockwise(_group(qp, k.shape[2]), kp, vp, segp, bq, bk, window)
  return out[:, :t].reshape(b, t, h, dh)


def _shares_a_segment(seg: jax.Array, tile_seg: jax.Array) -> jax.Array:
  """`[T]` bool: positions whose segment id is one of the tile's, in the same row (any row).

  Every key a tile's queries attend (and every query that attends a tile's keys) is one of
  them, so the tiles outside their span are wholly masked and skipped: a packed row's tiles
  attend only near their own sequences. Segments need not be contiguous.
  """
  return (seg[:, :, None] == tile_seg[:, None, :]).any(axis=(0, 2))


def _tile_scores(qi, kj, q_pos, k_pos, seg_i, seg_j, scale, window):
  """`[B, K, G, bq, bk]` float32 scaled scores, masked where not allowed, and the mask."""
  s = jnp.einsum("bqkgd,bskd->bkgqs", qi, kj, preferred_element_type=jnp.float32) * scale
  allowed = same_segment(seg_i, seg_j)[:, None, None] & causal_mask(q_pos, k_pos, window)
  return jnp.where(allowed, s, _MASKED), allowed


def _blockwise_forward(q, k, v, seg, bq, bk, window):
  """q `[B, T, K, G, D]`, k/v `[B, T, K, D]` (T a multiple of bq and bk) → out, lse."""
  b, t, kh, g, d = q.shape
  nq = t // bq
  scale = d**-0.5

  def query_tile(i):
    qi, seg_i = (jax.lax.dynamic_slice_in_dim(x, i * bq, bq, axis=1) for x in (q, seg))
    q_pos = i * bq + jnp.arange(bq)

    def key_tile(j, carry):
      m, denom, acc = carry
      kj, vj, seg_j = (jax.lax.dynamic_slice_in_dim(x, j * bk, bk, axis=1) for x in (k, v, seg))
      s, _ = _tile_scores(qi, kj, q_pos, j * bk + jnp.arange(bk), seg_i, seg_j, scale, window)
      m_new = jnp.maximum(m, s.max(axis=-1))
      p = jnp.exp(s - m_new[..., None])
      correction = jnp.exp(m - m_new)
      denom = denom * correction + p.sum(axis=-1)
      acc = acc * correction[..., None] + jnp.einsum(
          "bkgqs,bskd->bkgqd", p.astype(v.dtype), vj, preferred_element_type=jnp.float32
      )
      return m_new, denom, acc

    init = (
        jnp.full((b, kh, g, bq), -jnp.inf, jnp.float32),
        jnp.zeros((b, kh, g, bq), jnp.float32),
        jnp.zeros((b, kh, g, bq, d), jnp.float32),
    )
    # Key tiles at or below the causal diagonal, not wholly before the window, and not wholly
    # before the first token of any sequence in this query tile (packed rows).
    first = jnp.argmax(_shares_a_segment(seg, seg_i)) // bk
    if window is not None:
      first = jnp.maximum(first, jnp.maximum(i * bq - window + 1, 0) // bk)
    last = ((i + 1) * bq - 1) // bk + 1
    m, denom, acc = jax.lax.fori_loop(first, last, key_tile, init)
    return (acc / denom[..., None]).astype(v.dtype), m + jnp.log(denom)

  out, lse = jax.lax.map(query_tile, jnp.arange(nq))  # [nq, B, K, G, bq, D], [nq, B, K, G, bq]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, t, kh, g, d)
  lse = lse.transpose(1, 2, 3, 0, 4).reshape(b, kh, g, t)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _blockwise(q, k, v, seg, bq, bk, window):
  return _blockwise_forward(q, k, v, seg, bq, bk, window)[0]


def _blockwise_fwd(q, k, v, seg, bq, bk, window):
  out, lse = _blockwise_forward(q, k, v, seg, bq, bk, window)
  return out, (q, k, v, seg, out, lse)


def _blockwise_bwd(bq, bk, window, residuals, d_out):
  q, k, v, seg, out, lse = residuals
  b, t, kh, _, d = q.shape
  nk = t // bk
  scale = d**-0.5
  d_out = d_out.astype(jnp.float32)
  row_dot = jnp.einsum("btkgd,btkgd->bkgt", d_out, out.astype(jnp.float32))

  def key_tile(d_q, j):
    kj, vj, seg_j = (jax.lax.dynamic_slice_in_dim(x, j * bk, bk, axis=1) for x in (k, v, seg))
    k_pos = j * bk + jnp.arange(bk)

    def query_tile(i, carry):
      d_q, d_k, d_v = carry
      qi, doi, seg_i = (
          jax.lax.dynamic_slice_in_dim(x, i * bq, bq, axis=1) for x in (q, d_out, seg)
      )
      lse_i, dot_i = (jax.lax.dynamic_slice_in_dim(x, i * bq, bq, axis=3) for x in (lse, row_dot))
      q_pos = i * bq + jnp.arange(bq)
      s, allowed = _tile_scores(qi, kj, q_pos, k_pos, seg_i, seg_j, scale, window)
      p = jnp.where(allowed, jnp.exp(s - lse_i[..., None]), 0.0)
      d_v = d_v + jnp.einsum("bkgqs,bqkgd->bskd", p, doi)
      dp = jnp.einsum("bqkgd,bskd->bkgqs", doi, vj.astype(jnp.float32))
      ds = p * (dp - dot_i[..., None]) * scale
      dq_i = jnp.einsum("bkgqs,bskd->bqkgd", ds, kj.astype(jnp.float32))
      d_q = jax.lax.dynamic_update_slice_in_dim(
          d_q, jax.lax.dynamic_slice_in_dim(d_q, i * bq, bq, axis=1) + dq_i, i * bq, axis=1
      )
      d_k = d_k + jnp.einsum("bkgqs,bqkgd->bskd", ds, qi.astype(jnp.float32))
      return d_q, d_k, d_v

    zeros = jnp.zeros((b, bk, kh, d), jnp.float32)
    # Query tiles at or below the causal diagonal whose window reaches this key tile, and not
    # wholly after the last token of any sequence in this key tile (packed rows).
    first = (j * bk) // bq
    last = (t - 1 - jnp.argmax(_shares_a_segment(seg, seg_j)[::-1])) // bq + 1
    if window is not None:
      last = jnp.minimum(last, ((j + 1) * bk + window - 2) // bq + 1)
    d_q, d_k, d_v = jax.lax.fori_loop(first, last, query_tile, (d_q, zeros, zeros))
    return d_q, (d_k, d_v)

  d_q, (d_k, d_v) = jax.lax.scan(key_tile, jnp.zeros(q.shape, jnp.float32), jnp.arange(nk))
  untile = lambda x, like: x.transpose(1, 0, 2, 3, 4).reshape(like.shape).astype(like.dtype)
  return d_q.astype(q.dtype), untile(d_k, k), untile(d_v, v), None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def _splash_kernel(
    heads: int, t: int, block_q: int, block_k: int, interpret: bool, window: int | None
):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

  if window is None:
    causal = mask_lib.CausalMask((t, t))
  else:  # keys s in (t - W, t]
    causal = mask_lib.LocalMask((t, t), window_size=(window - 1, 0), offset=0)
  mask = mask_lib.MultiHeadMask([causal] * heads)
  sizes = kernel_lib.BlockSizes(
      block_q=block_q,
      block_kv=block_k,
      block_kv_compute=block_k,
      block_q_dkv=block_q,
      block_kv_dkv=block_k,
      block_kv_dkv_compute=block_k,
      block_q_dq=block_q,
      block_kv_dq=block_k,
  )
  return kernel_lib, kernel_lib.make_splash_mha(
      mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
  )


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    window: int | None = None,
    block_q: int = 512,
    block_k: int = 512,
    interpret: bool = False,
) -> jax.Array:
  """The TPU splash-attention kernel, given the segment ids as its `SegmentIds`.

  A padding query attends only to padding keys at or before it (itself at least), so its row
  stays finite. T is padded to a multiple of the tile sizes. Under a mesh context
  (`jax.set_mesh`), the kernel runs per shard with `shard_map`: batch over `data x fsdp`,
  heads over `tensor` when it divides the KV heads. Shapes as `self_attention`;
  `interpret=True` runs the kernel in the Pallas interpreter (any backend, for tests).
  """
  _, t, _, dh = q.shape
  bq, bk = block_q, block_k
  qp, kp, vp, segp = _tiles(q, k, v, segment_ids.astype(jnp.int32), bq, bk)
  tp = qp.shape[1]

  def run(qp, kp, vp, segments):
    kernel_lib, kernel = _splash_kernel(qp.shape[2], tp, bq, bk, interpret, window)
    per_row = lambda qr, kr, vr, sr: kernel(
        (qr * dh**-0.5).swapaxes(0, 1),
        kr.swapaxes(0, 1),
        vr.swapaxes(0, 1),
        segment_ids=kernel_lib.SegmentIds(q=sr, kv=sr),
    ).swapaxes(0, 1)
    return jax.vmap(per_row)(qp, kp, vp, segments)

  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and "tensor" in mesh.axis_names:
    heads = "tensor" if k.shape[2] % mesh.shape["tensor"] == 0 else None
    rows = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    spec = P(rows, None, heads, None)
    run = jax.shard_map(
        run, mesh=mesh, in_specs=(spec, spec, spec, P(rows, None)), out_specs=spec, check_vma=False
    )
  return run(qp, kp, vp, segp)[:, :t].astype(v.dtype)


def cudnn_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    window: int | None = None,
    packed: bool = False,
    implementation: str | None = "cudnn",
) -> jax.Array:
  """`jax.nn.dot_product_attention` with `is_causal` and the window as
  `local_window_size=(W - 1, 0)`.

  Rows of one sequence (`packed=False`): the fused kernel takes right padding only
  (`key_value_seq_lengths`), so each row is rotated to start at its first real token, attended,
  and rotated back. This assumes each row's real tokens are one contiguous span, as in every
  unpacked batch this trainer builds (left-padded prompt, completion, then padding); the
  rotation keeps the distances between them, so the window is unchanged. Packed rows: a
  `[B, 1, T, T]` same-segment mask. `implementation="cudnn"` is the GPU kernel; tests pass
  `None` (XLA) to check the layout and masking on CPU. Shapes as `self_attention`.
  """
  seg = segment_ids.astype(jnp.int32)
  window_size = None if window is None else (window - 1, 0)
  if packed:
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=same_segment(seg, seg)[:, None],
        is_causal=True,
        local_window_size=window_size,
        implementation=implementation,
    ).astype(v.dtype)
  t = q.shape[1]
  valid = seg > 0
  start = jnp.argmax(valid, axis=1).astype(jnp.int32)
  lengths = valid.sum(axis=1, dtype=jnp.int32)
  rotate = lambda x, shift: jnp.take_along_axis(
      x, ((jnp.arange(t)[None, :] + shift[:, None]) % t)[:, :, None, None], axis=1
  )
  out = jax.nn.dot_product_attention(
      rotate(q, start),
      rotate(k, start),
      rotate(v, start),
      is_causal=True,
      key_value_seq_lengths=lengths,
      local_window_size=window_size,
      implementation=implementation,
  )
  return rotate(out, -start).astype(v.dtype)
