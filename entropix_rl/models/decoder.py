"""The decoder as pure functions of a params pytree, one for every model family.

RMSNorm → grouped-query attention with RoPE → RMSNorm → SwiGLU MLP, layers stacked on a
leading axis and run under `lax.scan`. The decoder flags of `ModelConfig` switch its
features: `qkv_bias` (biases on q, k, v), `qk_norm` (RMSNorm over Dh of each query and key
head, before RoPE) and `sliding_window` (each query sees the last W keys). A model family
(`models.families`) only sets the flags and converts checkpoints. Attention over a whole
sequence uses `config.attention_impl` (`models.attention`); decoding with a KV cache attends
densely over the cache. See docs/design.md for the param tree and the KV cache layout.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from entropix_rl.models import attention
from entropix_rl.models.config import ModelConfig, rope_inverse_frequencies
from entropix_rl.models.partitioning import constrain_rows

Params = dict


@flax.struct.dataclass
class KVCache:
  """Preallocated key/value cache.

  Attributes:
    k, v: `[L, B, K, S, Dh]` in the compute dtype (heads before slots, so each head's keys
      are contiguous for the decode-step matmuls).
    valid: `[B, S]` bool, True where a slot holds a real (non-padding) token.
    lengths: `[B]` int32, real tokens seen so far per row (the next RoPE position).
    index: int32 scalar, tokens written so far by the shared write head; the next slot is
      `index mod S`, so the slots form a ring that rows refilled mid-decode (`sampling`)
      wrap around.
    first_slot: `[B]` int32, the slot of each row's first token (0 unless the row was
      refilled), so slot s holds the row's token `(s − first_slot) mod S`.
  """

  k: jax.Array
  v: jax.Array
  valid: jax.Array
  lengths: jax.Array
  index: jax.Array
  first_slot: jax.Array

  @property
  def max_length(self) -> int:
    return self.k.shape[3]


def init_cache(config: ModelConfig, batch_size: int, max_length: int) -> KVCache:
  """An empty cache for `batch_size` rows of up to `max_length` tokens (prompt + generation)."""
  shape = (config.num_layers, batch_size, config.num_kv_heads, max_length, config.head_dim)
  return KVCache(
      k=jnp.zeros(shape, config.compute_jnp_dtype),
      v=jnp.zeros(shape, config.compute_jnp_dtype),
      valid=jnp.zeros((batch_size, max_length), bool),
      lengths=jnp.zeros((batch_size,), jnp.int32),
      index=jnp.zeros((), jnp.int32),
      first_slot=jnp.zeros((batch_size,), jnp.int32),
  )


def init_params(config: ModelConfig, rng: jax.Array, init_std: float = 0.02) -> Params:
  """Random params (normal with `init_std`, norms at 1, biases at 0), in `param_dtype`.

  The tree (docs/design.md): `embed [V, D]`, `final_norm [D]`, `lm_head [D, V]` unless tied,
  and `layers`, each leaf with a leading `[L]` axis: `attn_norm, mlp_norm [L, D]`,
  `q [L, D, H, Dh]`, `k, v [L, D, K, Dh]`, `o [L, H, Dh, D]`, `gate, up [L, D, F]`,
  `down [L, F, D]`; with `qkv_bias`, `q_bias [L, H, Dh]` and `k_bias, v_bias [L, K, Dh]`; with
  `qk_norm`, `q_norm, k_norm [L, Dh]`.
  """
  d, h, k, dh, f, n = (
      config.hidden_size,
      config.num_heads,
      config.num_kv_heads,
      config.head_dim,
      config.intermediate_size,
      config.num_layers,
  )
  shapes = {
      "q": (n, d, h, dh),
      "k": (n, d, k, dh),
      "v": (n, d, k, dh),
      "o": (n, h, dh, d),
      "gate": (n, d, f),
      "up": (n, d, f),
      "down": (n, f, d),
  }
  keys = jax.random.split(rng, len(shapes) + 2)
  dtype = config.param_jnp_dtype
  layers = {
      name: (init_std * jax.random.normal(key, shape)).astype(dtype)
      for key, (name, shape) in zip(keys, shapes.items())
  }
  layers["attn_norm"] = jnp.ones((n, d), dtype)
  layers["mlp_norm"] = jnp.ones((n, d), dtype)
  if config.qkv_bias:
    layers["q_bias"] = jnp.zeros((n, h, dh), dtype)
    layers["k_bias"] = jnp.zeros((n, k, dh), dtype)
    layers["v_bias"] = jnp.zeros((n, k, dh), dtype)
  if config.qk_norm:
    layers["q_norm"] = jnp.ones((n, dh), dtype)
    layers["k_norm"] = jnp.ones((n, dh), dtype)
  params = {
      "embed": (init_std * jax.random.normal(keys[-2], (config.vocab_size, d))).astype(dtype),
      "layers": layers,
      "final_norm": jnp.ones((d,), dtype),
  }
  if not config.tie_embeddings:
    params["lm_head"] = (init_std * jax.random.normal(keys[-1], (d, config.vocab_size))).astype(
        dtype
    )
  return params


def unembedding(config: ModelConfig, params: Params) -> jax.Array:
  """The `[D, V]` unembedding matrix (the transposed embedding when tied)."""
  return params["embed"].T if config.tie_embeddings else params["lm_head"]


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """RMSNorm computed in float32, cast back to `x.dtype` before the weight (as HF does)."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight.astype(x.dtype) * normed.astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotary embedding, HF "rotate half" layout. x: `[B, T, heads, Dh]`, positions: `[B, T]`."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
  half = x.shape[-1] // 2
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


def _qkv(
    config: ModelConfig, x: jax.Array, layer: Params, positions: jax.Array, inv_freq: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Normed input → q `[B,T,H,Dh]`, k, v `[B,T,K,Dh]` (q/k norms, then RoPE on q and k)."""
  w = lambda name: layer[name].astype(config.compute_jnp_dtype)
  h = rms_norm(x, layer["attn_norm"], config.rms_norm_eps)
  q = jnp.einsum("btd,dhk->bthk", h, w("q"))
  k = jnp.einsum("btd,dhk->bthk", h, w("k"))
  v = jnp.einsum("btd,dhk->bthk", h, w("v"))
  if config.qkv_bias:
    q, k, v = q + w("q_bias"), k + w("k_bias"), v + w("v_bias")
  if config.qk_norm:
    q = rms_norm(q, layer["q_norm"], config.rms_norm_eps)
    k = rms_norm(k, layer["k_norm"], config.rms_norm_eps)
  return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v


def _output_and_mlp(config: ModelConfig, x: jax.Array, attn: jax.Array, layer: Params) -> jax.Array:
  """Residual attention output projection, then the residual SwiGLU block."""
  w = lambda name: layer[name].astype(config.compute_jnp_dtype)
  x = x + jnp.einsum("bthk,hkd->btd", attn, w("o"))
  h = rms_norm(x, layer["mlp_norm"], config.rms_norm_eps)
  mlp = jax.nn.silu(jnp.einsum("btd,df->btf", h, w("gate"))) * jnp.einsum("btd,df->btf", h, w("up"))
  return x + jnp.einsum("btf,fd->btd", mlp, w("down"))


def _cached_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    cache_valid: jax.Array,
    k_new: jax.Array,
    v_new: jax.Array,
    new_valid: jax.Array,
    index: jax.Array,
    first_slot: jax.Array,
    window: int | None,
) -> jax.Array:
  """Attention of T new queries over the cache's valid slots and, causally, the new tokens.

  q: `[B, T, H, Dh]`; k_cache, v_cache: one layer's `[B, K, S, Dh]`; k_new, v_new:
  `[B, T, K, Dh]`. The new keys are not yet in the cache, so nothing is copied: two score
  blocks (`[B,K,G,T,S]` over the cache, `[B,K,G,T,T]` over the new tokens) share one softmax.
  The new tokens go to slots `[index, index + T)` mod S. The causal mask and the window
  (`attention.causal_mask`) compare token indices in each row's own sequence: slot s holds
  row b's token `(s − first_slot[b]) mod S`, as in `attention.self_attention`.
  """
  b, t, h, dh = q.shape
  kh = k_cache.shape[1]
  qg = q.reshape(b, t, kh, h // kh, dh)
  scale = dh**-0.5
  if t == 1:  # a decode step: a multiply-reduce over Dh beats B·K matmuls of one row each
    q32 = qg[:, 0].astype(jnp.float32)[:, :, :, None, :]  # [B, K, G, 1, Dh]
    old = jnp.sum(k_cache.astype(jnp.float32)[:, :, None] * q32, axis=-1)[:, :, :, None] * scale
  else:
    old = jnp.einsum("btkgd,bksd->bkgts", qg, k_cache, preferred_element_type=jnp.float32) * scale
  new = jnp.einsum("btkgd,bskd->bkgts", qg, k_new, preferred_element_type=jnp.float32) * scale
  s = k_cache.shape[2]
  q_seq = (index + jnp.arange(t)[None, :] - first_slot[:, None]) % s  # [B, T]
  k_seq = (jnp.arange(s)[None, :] - first_slot[:, None]) % s  # [B, S]
  old_allowed = cache_valid[:, None, :] & attention.causal_mask(q_seq, k_seq, window)
  new_allowed = new_valid[:, None, :] & attention.causal_mask(q_seq, q_seq, window)
  masked = jnp.finfo(jnp.float32).min
  old = jnp.where(old_allowed[:, None, None], old, masked)
  new = jnp.where(new_allowed[:, None, None], new, masked)
  probs = jax.nn.softmax(jnp.concatenate([old, new], axis=-1), axis=-1).astype(v_new.dtype)
  if t == 1:
    from_cache = jnp.sum(
        probs[:, :, :, 0, :s, None].astype(jnp.float32) * v_cache.astype(jnp.float32)[:, :, None],
        axis=-2,
    )  # [B, K, G, Dh]
    from_cache = from_cache[:, None].astype(v_new.dtype)
  else:
    from_cache = jnp.einsum("bkgts,bksd->btkgd", probs[..., :s], v_cache)
  out = from_cache + jnp.einsum("bkgts,bskd->btkgd", probs[..., s:], v_new)
  return out.reshape(b, t, h, dh)


def _default_positions(mask: jax.Array, start: jax.Array) -> jax.Array:
  """RoPE positions counting real tokens from `start` (so left padding is handled)."""
  return jnp.maximum(start[:, None] + jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)


def _embed(config: ModelConfig, params: Params, tokens: jax.Array) -> jax.Array:
  return params["embed"].astype(config.compute_jnp_dtype)[tokens]


def _self_attention_stack(
    config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    positions: jax.Array,
    segment_ids: jax.Array,
    remat: bool,
    keep_kv: bool,
    packed: bool = False,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
  """All layers over T tokens with `config.attention_impl`; optionally the stacked k, v."""
  impl = attention.resolve_impl(config.attention_impl, config.compute_jnp_dtype)
  inv_freq = rope_inverse_frequencies(config)

  def body(x, layer):
    x = constrain_rows(x)
    q, k, v = _qkv(config, x, layer, positions, inv_freq)
    attn = attention.self_attention(
        impl,
        q,
        k,
        v,
        segment_ids,
        packed=packed,
        window=config.sliding_window,
        block_q=config.attention_block_q,
        block_k=config.attention_block_k,
    )
    return constrain_rows(_output_and_mlp(config, x, attn, layer)), (k, v) if keep_kv else None

  if remat:
    body = jax.checkpoint(body)
  x, kv = jax.lax.scan(body, _embed(config, params, tokens), params["layers"])
  return rms_norm(x, params["final_norm"], config.rms_norm_eps), kv


def forward_hidden(
    config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    cache: KVCache | None = None,
    mask: jax.Array | None = None,
    remat: bool = False,
    segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, KVCache | None]:
  """Runs the decoder and returns the final (normed) hidden states.

  Args:
    config: model config (static).
    params: the param tree (docs/design.md).
    tokens: `[B, T]` int32 token ids.
    positions: `[B, T]` int32 RoPE positions. Default: counts real tokens (per `mask`),
      continuing from `cache.lengths` when a cache is given, so left padding is handled.
    cache: optional KV cache; the T new tokens are written at slots
      `[cache.index, cache.index + T)` mod S (which must not wrap within the T tokens) and
      attend to every valid earlier token of their row. With a cache,
      attention is dense over the cache (meant for decoding a few tokens at a time; `prefill`
      fills an empty cache with `config.attention_impl`).
    mask: `[B, T]` bool, False for padding tokens (they are never attended to). Default: all True.
    remat: rematerialise each layer in the backward pass (saves activation memory in training).
    segment_ids: packed rows (`entropix_rl.packing`): `[B, T]` int32, each sequence's id at
      its tokens and 0 at empty slots; a token attends only within its sequence. Needs
      `positions` (restarting at 0 per sequence); replaces `mask`; not with a cache.

  Returns:
    hidden `[B, T, D]` in the compute dtype, and the updated cache (None without a cache).
  """
  b, t = tokens.shape
  if segment_ids is not None:
    if cache is not None or positions is None:
      raise ValueError("packed rows (segment_ids) need positions and no cache")
    stack = _self_attention_stack(
        config, params, tokens, positions, segment_ids, remat, False, packed=True
    )
    return stack[0], None
  mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
  if cache is None:
    positions = (
        _default_positions(mask, jnp.zeros((b,), jnp.int32)) if positions is None else positions
    )
    return _self_attention_stack(config, params, tokens, positions, mask, remat, False)[0], None
  positions = _default_positions(mask, cache.lengths) if positions is None else positions
  inv_freq = rope_inverse_frequencies(config)

  def body(x, scanned):
    layer, k_cache, v_cache = scanned
    q, k, v = _qkv(config, x, layer, positions, inv_freq)
    attn = _cached_attention(
        q,
        k_cache,
        v_cache,
        cache.valid,
        k,
        v,
        mask,
        cache.index,
        cache.first_slot,
        config.sliding_window,
    )
    return _output_and_mlp(config, x, attn, layer), (k, v)

  if remat:
    body = jax.checkpoint(body)
  x, (k_new, v_new) = jax.lax.scan(
      body, _embed(config, params, tokens), (params["layers"], cache.k, cache.v)
  )
  hidden = rms_norm(x, params["final_norm"], config.rms_norm_eps)
  slot = cache.index % cache.max_length
  write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(
      buf, jnp.swapaxes(new, 2, 3), slot, axis=3
  )  # [L,B,T,K,Dh] into [L,B,K,S,Dh]
  new_cache = KVCache(
      k=write(cache.k, k_new),
      v=write(cache.v, v_new),
      valid=jax.lax.dynamic_update_slice_in_dim(cache.valid, mask, slot, 1),
      lengths=cache.lengths + mask.sum(axis=1, dtype=jnp.int32),
      index=cache.index + t,
      first_slot=cache.first_slot,
  )
  return hidden, new_cache


def prefill(
    config: ModelConfig, params: Params, tokens: jax.Array, mask: jax.Array, max_length: int
) -> tuple[jax.Array, KVCache]:
  """Runs left-padded prompts through the decoder into a new cache of `max_length` slots.

  Attention uses `config.attention_impl` (as training does), and the prompt's keys/values
  are written to slots `[0, T)`. Equivalent to `forward_hidden` with an empty cache.

  Args:
    tokens: `[B, T]` int32 prompts; mask: `[B, T]` bool, False at padding.
    max_length: cache slots, at least T (prompt + tokens to decode).

  Returns:
    hidden `[B, T, D]` and the filled cache (`index = T`).
  """
  b, t = tokens.shape
  if max_length < t:
    raise ValueError(f"max_length={max_length} is shorter than the prompt width {t}")
  mask = mask.astype(bool)
  positions = _default_positions(mask, jnp.zeros((b,), jnp.int32))
  hidden, (k, v) = _self_attention_stack(config, params, tokens, positions, mask, False, True)
  pad = ((0, 0), (0, 0), (0, 0), (0, max_length - t), (0, 0))
  to_cache = lambda x: jnp.pad(jnp.swapaxes(x, 2, 3), pad)  # [L,B,T,K,Dh] -> [L,B,K,S,Dh]
  cache = KVCache(
      k=to_cache(k),
      v=to_cache(v),
      valid=jnp.pad(mask, ((0, 0), (0, max_length - t))),
      lengths=mask.sum(axis=1, dtype=jnp.int32),
      index=jnp.int32(t),
      first_slot=jnp.zeros((b,), jnp.int32),
  )
  return hidden, cache


def logits_from_hidden(config: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
  """`[..., V]` float32 logits from `[..., D]` hidden states."""
  w = unembedding(config, params).astype(config.compute_jnp_dtype)
  return jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=jnp.float32)


def forward(
    config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    cache: KVCache | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, KVCache | None]:
  """Full forward pass: `[B, T, V]` float32 logits and the updated cache.

  Same arguments as `forward_hidden`. Materialises all logits: use `forward_hidden` with
  `entropix_rl.token_stats` for training-size batches.
  """
  hidden, cache = forward_hidden(config, params, tokens, positions, cache, mask)
  return logits_from_hidden(config, params, hidden), cache
