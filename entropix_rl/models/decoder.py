"""The Qwen2/Llama decoder as pure functions of a params pytree.

RMSNorm → grouped-query attention with RoPE (optional qkv bias) → RMSNorm → SwiGLU MLP,
layers stacked on a leading axis and run under `lax.scan`. See docs/design.md for the param
tree and the KV cache layout.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from entropix_rl.models.config import ModelConfig, rope_inverse_frequencies

Params = dict


@flax.struct.dataclass
class KVCache:
  """Preallocated key/value cache.

  Attributes:
    k, v: `[L, B, S, K, Dh]` in the compute dtype.
    valid: `[B, S]` bool, True where a slot holds a real (non-padding) token.
    lengths: `[B]` int32, real tokens seen so far per row (the next RoPE position).
    index: int32 scalar, the next slot to write (shared by all rows).
  """

  k: jax.Array
  v: jax.Array
  valid: jax.Array
  lengths: jax.Array
  index: jax.Array

  @property
  def max_length(self) -> int:
    return self.k.shape[2]


def init_cache(config: ModelConfig, batch_size: int, max_length: int) -> KVCache:
  """An empty cache for `batch_size` rows of up to `max_length` tokens (prompt + generation)."""
  shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_dim)
  return KVCache(
      k=jnp.zeros(shape, config.compute_jnp_dtype),
      v=jnp.zeros(shape, config.compute_jnp_dtype),
      valid=jnp.zeros((batch_size, max_length), bool),
      lengths=jnp.zeros((batch_size,), jnp.int32),
      index=jnp.zeros((), jnp.int32),
  )


def init_params(config: ModelConfig, rng: jax.Array, init_std: float = 0.02) -> Params:
  """Random params (normal with `init_std`, norms at 1, biases at 0), in `param_dtype`."""
  d, h, k, dh, f, n = (config.hidden_size, config.num_heads, config.num_kv_heads,
                       config.head_dim, config.intermediate_size, config.num_layers)
  shapes = {
      "q": (n, d, h, dh), "k": (n, d, k, dh), "v": (n, d, k, dh), "o": (n, h, dh, d),
      "gate": (n, d, f), "up": (n, d, f), "down": (n, f, d),
  }
  keys = jax.random.split(rng, len(shapes) + 2)
  dtype = config.param_jnp_dtype
  layers = {name: (init_std * jax.random.normal(key, shape)).astype(dtype)
            for key, (name, shape) in zip(keys, shapes.items())}
  layers["attn_norm"] = jnp.ones((n, d), dtype)
  layers["mlp_norm"] = jnp.ones((n, d), dtype)
  if config.qkv_bias:
    layers["q_bias"] = jnp.zeros((n, h, dh), dtype)
    layers["k_bias"] = jnp.zeros((n, k, dh), dtype)
    layers["v_bias"] = jnp.zeros((n, k, dh), dtype)
  params = {
      "embed": (init_std * jax.random.normal(keys[-2], (config.vocab_size, d))).astype(dtype),
      "layers": layers,
      "final_norm": jnp.ones((d,), dtype),
  }
  if not config.tie_embeddings:
    params["lm_head"] = (init_std * jax.random.normal(keys[-1], (d, config.vocab_size))).astype(dtype)
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


def _attention(config: ModelConfig, q: jax.Array, k: jax.Array, v: jax.Array,
               allowed: jax.Array) -> jax.Array:
  """Grouped-query attention. q: `[B,T,H,Dh]`, k/v: `[B,S,K,Dh]`, allowed: `[B,T,S]` bool."""
  b, t, h, dh = q.shape
  groups = h // config.num_kv_heads
  q = q.reshape(b, t, config.num_kv_heads, groups, dh)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores * (dh ** -0.5)
  scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, h, dh)


def _layer(config: ModelConfig, x: jax.Array, layer: Params, positions: jax.Array,
           inv_freq: jax.Array, kv_in: tuple[jax.Array, jax.Array] | None, index: jax.Array,
           allowed: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """One decoder block. Returns the new residual stream and this layer's (k, v) for the cache."""
  cdt = config.compute_jnp_dtype
  w = lambda name: layer[name].astype(cdt)
  h = rms_norm(x, layer["attn_norm"], config.rms_norm_eps)
  q = jnp.einsum("btd,dhk->bthk", h, w("q"))
  k = jnp.einsum("btd,dhk->bthk", h, w("k"))
  v = jnp.einsum("btd,dhk->bthk", h, w("v"))
  if config.qkv_bias:
    q, k, v = q + w("q_bias"), k + w("k_bias"), v + w("v_bias")
  q = apply_rope(q, positions, inv_freq)
  k = apply_rope(k, positions, inv_freq)
  if kv_in is not None:
    k = jax.lax.dynamic_update_slice_in_dim(kv_in[0], k, index, axis=1)
    v = jax.lax.dynamic_update_slice_in_dim(kv_in[1], v, index, axis=1)
  attn = _attention(config, q, k, v, allowed)
  x = x + jnp.einsum("bthk,hkd->btd", attn, w("o"))
  h = rms_norm(x, layer["mlp_norm"], config.rms_norm_eps)
  mlp = jax.nn.silu(jnp.einsum("btd,df->btf", h, w("gate"))) * jnp.einsum("btd,df->btf", h, w("up"))
  x = x + jnp.einsum("btf,fd->btd", mlp, w("down"))
  return x, (k, v)


def forward_hidden(config: ModelConfig, params: Params, tokens: jax.Array,
                   positions: jax.Array | None = None, cache: KVCache | None = None,
                   mask: jax.Array | None = None,
                   remat: bool = False) -> tuple[jax.Array, KVCache | None]:
  """Runs the decoder and returns the final (normed) hidden states.

  Args:
    config: model config (static).
    params: the param tree (docs/design.md).
    tokens: `[B, T]` int32 token ids.
    positions: `[B, T]` int32 RoPE positions. Default: counts real tokens (per `mask`),
      continuing from `cache.lengths` when a cache is given, so left padding is handled.
    cache: optional KV cache; the T new tokens are written at slots
      `[cache.index, cache.index + T)` and attend to every valid earlier slot.
    mask: `[B, T]` bool, False for padding tokens (they are never attended to). Default: all True.
    remat: rematerialise each layer in the backward pass (saves activation memory in training).

  Returns:
    hidden `[B, T, D]` in the compute dtype, and the updated cache (None without a cache).
  """
  b, t = tokens.shape
  mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
  start = jnp.zeros((b,), jnp.int32) if cache is None else cache.lengths
  if positions is None:
    positions = start[:, None] + jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
    positions = jnp.maximum(positions, 0)
  if cache is None:
    key_valid, query_slots, key_slots, index = mask, jnp.arange(t), jnp.arange(t), jnp.int32(0)
  else:
    index = cache.index
    key_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, mask, index, axis=1)
    query_slots, key_slots = index + jnp.arange(t), jnp.arange(cache.max_length)
  allowed = key_valid[:, None, :] & (key_slots[None, None, :] <= query_slots[None, :, None])
  inv_freq = rope_inverse_frequencies(config)
  x = params["embed"].astype(config.compute_jnp_dtype)[tokens]

  def body(x, scanned):
    layer, kv_in = scanned
    return _layer(config, x, layer, positions, inv_freq, kv_in, index, allowed)

  if remat:
    body = jax.checkpoint(body)
  kv_in = None if cache is None else (cache.k, cache.v)
  x, (k_all, v_all) = jax.lax.scan(body, x, (params["layers"], kv_in))
  hidden = rms_norm(x, params["final_norm"], config.rms_norm_eps)
  if cache is None:
    return hidden, None
  new_cache = KVCache(k=k_all, v=v_all, valid=key_valid,
                      lengths=cache.lengths + mask.sum(axis=1, dtype=jnp.int32),
                      index=index + t)
  return hidden, new_cache


def logits_from_hidden(config: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
  """`[..., V]` float32 logits from `[..., D]` hidden states."""
  w = unembedding(config, params).astype(config.compute_jnp_dtype)
  return jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=jnp.float32)


def forward(config: ModelConfig, params: Params, tokens: jax.Array,
            positions: jax.Array | None = None, cache: KVCache | None = None,
            mask: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
  """Full forward pass: `[B, T, V]` float32 logits and the updated cache.

  Same arguments as `forward_hidden`. Materialises all logits: use `forward_hidden` with
  `entropix_rl.token_stats` for training-size batches.
  """
  hidden, cache = forward_hidden(config, params, tokens, positions, cache, mask)
  return logits_from_hidden(config, params, hidden), cache
