"""Every attention implementation against the dense reference: values and gradients, with
left and right padding, packed rows of several sequences, grouped-query heads, sequence lengths
that the tiles do not divide and a sliding window.

Tolerances (float32): values 1e-5, gradients 1e-4 (the tiles sum in another order).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropix_rl.models import (
    attention,
    forward_hidden,
    init_cache,
    init_params,
    prefill,
    tiny_config,
)

VALUE_TOL, GRAD_TOL = 1e-5, 1e-4


def _inputs(t, heads=4, kv_heads=2, dh=16, batch=3, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(keys[0], (batch, t, heads, dh))
  k = jax.random.normal(keys[1], (batch, t, kv_heads, dh))
  v = jax.random.normal(keys[2], (batch, t, kv_heads, dh))
  valid = np.ones((batch, t), bool)
  valid[0, :3] = False  # left padding
  valid[1, t - 4 :] = False  # right padding
  valid[2, :2] = valid[2, t - 2 :] = False
  return q, k, v, jnp.asarray(valid)


# Two packed rows of 29 slots: sequences of 7, 12 and 6 tokens then 4 empty slots; 20 and 9.
PACKED = np.array([[1] * 7 + [2] * 12 + [3] * 6 + [0] * 4, [4] * 20 + [5] * 9], np.int32)


def _impl(name, window=None, packed=False):
  if name == "splash":
    return lambda q, k, v, valid: attention.splash_attention(
        q, k, v, valid, window=window, block_q=128, block_k=128, interpret=True
    )
  if name == "cudnn":  # the same wrapper with XLA's implementation (no GPU here)
    return lambda q, k, v, valid: attention.cudnn_attention(
        q, k, v, valid, window=window, packed=packed, implementation=None
    )
  return lambda q, k, v, valid: attention.blockwise_attention(
      q, k, v, valid, window=window, block_q=8, block_k=16
  )


def _valid_rows(x, valid):
  return np.asarray(x)[np.asarray(valid)]


@pytest.mark.parametrize("name", ["blockwise", "splash", "cudnn"])
@pytest.mark.parametrize("t", [13, 32])
def test_values_match_dense(name, t):
  q, k, v, valid = _inputs(t)
  ref = attention.dense_attention(q, k, v, valid)
  got = _impl(name)(q, k, v, valid)
  assert got.shape == ref.shape and np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_allclose(
      _valid_rows(got, valid), _valid_rows(ref, valid), atol=VALUE_TOL, rtol=0
  )


@pytest.mark.parametrize("name", ["blockwise", "splash", "cudnn"])
def test_gradients_match_dense(name):
  q, k, v, valid = _inputs(21, seed=1)
  weight = jax.random.normal(jax.random.PRNGKey(5), q.shape) * valid[:, :, None, None]
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, valid) * weight)
  ref = jax.grad(loss(attention.dense_attention), argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(loss(_impl(name)), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, ref):
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=GRAD_TOL, rtol=0)


@pytest.mark.parametrize("window", [None, 4])
def test_dense_on_packed_rows_equals_each_sequence_alone(window):
  q, k, v = (x[:2] for x in _inputs(29, seed=7)[:3])
  got = np.asarray(attention.dense_attention(q, k, v, PACKED, window=window))
  for b in range(2):
    for seg in set(PACKED[b]) - {0}:
      (slots,) = np.nonzero(PACKED[b] == seg)
      qs, ks, vs = (x[b : b + 1, slots] for x in (q, k, v))
      want = attention.dense_attention(qs, ks, vs, np.ones((1, len(slots)), bool), window=window)
      np.testing.assert_allclose(got[b, slots], np.asarray(want)[0], atol=VALUE_TOL, rtol=0)


@pytest.mark.parametrize("name", ["blockwise", "splash", "cudnn"])
@pytest.mark.parametrize("window", [None, 4])
def test_packed_rows_values_and_gradients_match_dense(name, window):
  q, k, v = (x[:2] for x in _inputs(29, seed=8)[:3])
  real = (PACKED > 0)[:, :, None, None]
  weight = jax.random.normal(jax.random.PRNGKey(9), q.shape) * real
  dense = lambda q, k, v, seg: attention.dense_attention(q, k, v, seg, window=window)
  fn = _impl(name, window=window, packed=True)
  np.testing.assert_allclose(
      np.asarray(fn(q, k, v, PACKED)) * real,
      np.asarray(dense(q, k, v, PACKED)) * real,
      atol=VALUE_TOL,
      rtol=0,
  )
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v, PACKED) * weight)
  ref = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(loss(fn), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, ref):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=GRAD_TOL, rtol=0)


def test_blockwise_skips_only_tiles_outside_every_segment_of_the_tile():
  # Many short sequences in one row, so most key tiles lie before a query tile's sequences and
  # are skipped; id 1 comes back after 34 tokens, so its later tokens still attend its first 5.
  seg = np.array([[1] * 5 + [2] * 9 + [3] * 20 + [1] * 6 + [0] * 8, [4] * 48], np.int32)
  q, k, v = (x[:2] for x in _inputs(48, seed=11)[:3])
  weight = jax.random.normal(jax.random.PRNGKey(12), q.shape)
  blockwise = lambda q, k, v: attention.blockwise_attention(q, k, v, seg, block_q=8, block_k=8)
  dense = lambda q, k, v: attention.dense_attention(q, k, v, seg)
  np.testing.assert_allclose(
      np.asarray(blockwise(q, k, v)), np.asarray(dense(q, k, v)), atol=VALUE_TOL, rtol=0
  )
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * weight)
  got = jax.grad(loss(blockwise), argnums=(0, 1, 2))(q, k, v)
  ref = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, ref):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=GRAD_TOL, rtol=0)
  one_row = seg[:1]
  spans = np.asarray(attention._shares_a_segment(one_row, one_row[:, 10:18]))  # ids 2, 3
  np.testing.assert_array_equal(np.flatnonzero(spans), np.arange(5, 34))


@pytest.mark.parametrize("name", ["blockwise", "splash", "cudnn"])
def test_sliding_window_values_and_gradients_match_dense(name):
  """A window of 5 over 37 tokens: blockwise skips the key tiles wholly before the window
  (forward) and the query tiles whose window does not reach a key tile (backward)."""
  q, k, v, valid = _inputs(37, seed=3)
  dense = lambda q, k, v, valid: attention.dense_attention(q, k, v, valid, window=5)
  ref, got = dense(q, k, v, valid), _impl(name, window=5)(q, k, v, valid)
  assert np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_allclose(
      _valid_rows(got, valid), _valid_rows(ref, valid), atol=VALUE_TOL, rtol=0
  )
  full = attention.dense_attention(q, k, v, valid)
  assert np.abs(_valid_rows(full, valid) - _valid_rows(ref, valid)).max() > 0.1  # it masks
  weight = jax.random.normal(jax.random.PRNGKey(6), q.shape) * valid[:, :, None, None]
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, valid) * weight)
  ref_grads = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
  grads = jax.grad(loss(_impl(name, window=5)), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(grads, ref_grads):
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=GRAD_TOL, rtol=0)


def test_sliding_window_keys_are_the_last_w_slots():
  """The dense reference itself: query t sees exactly the valid keys s with t - W < s <= t."""
  q, k, v, valid = (np.asarray(x, np.float64) for x in _inputs(12, seed=4))
  out = np.asarray(attention.dense_attention(*_inputs(12, seed=4), window=3))
  group = q.shape[2] // k.shape[2]
  for b, t in zip(*np.nonzero(valid)):
    keys = [s for s in range(max(0, t - 2), t + 1) if valid[b, s]]
    for h in range(q.shape[2]):
      scores = k[b, keys, h // group] @ q[b, t, h] / np.sqrt(q.shape[3])
      probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
      np.testing.assert_allclose(out[b, t, h], probs @ v[b, keys, h // group], atol=VALUE_TOL)


def test_bfloat16_blockwise_close_to_dense():
  q, k, v, valid = (
      x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in _inputs(40, seed=2)
  )
  ref = attention.dense_attention(q, k, v, valid).astype(jnp.float32)
  got = attention.blockwise_attention(q, k, v, valid, block_q=16, block_k=16)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      _valid_rows(got.astype(jnp.float32), valid), _valid_rows(ref, valid), atol=3e-2, rtol=0
  )


@pytest.mark.parametrize("impl", ["blockwise", "dense"])
def test_model_forward_and_grads_with_each_impl(impl):
  config = tiny_config(attention_impl="dense")
  params = init_params(config, jax.random.PRNGKey(0), init_std=0.2)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 11), 0, config.vocab_size)
  mask = jnp.ones(tokens.shape, bool).at[0, :4].set(False)
  other = config.replace(attention_impl=impl, attention_block_q=4, attention_block_k=8)
  loss = lambda cfg: lambda p: jnp.sum(
      forward_hidden(cfg, p, tokens, mask=mask, remat=True)[0] * mask[:, :, None]
  )
  ref_value, ref_grads = jax.value_and_grad(loss(config))(params)
  value, grads = jax.value_and_grad(loss(other))(params)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=GRAD_TOL, rtol=1e-4), grads, ref_grads
  )


@pytest.mark.parametrize("model_type,window", [("qwen2", None), ("mistral", 3)])
def test_prefill_equals_forward_with_an_empty_cache(model_type, window):
  config = tiny_config(
      model_type=model_type,
      sliding_window=window,
      attention_impl="blockwise",
      attention_block_q=4,
      attention_block_k=4,
  )
  params = init_params(config, jax.random.PRNGKey(0), init_std=0.2)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 0, config.vocab_size)
  mask = jnp.ones(tokens.shape, bool).at[1, :5].set(False)
  want_hidden, want_cache = forward_hidden(
      config.replace(attention_impl="dense"),
      params,
      tokens,
      cache=init_cache(config, 2, 16),
      mask=mask,
  )
  hidden, cache = prefill(config, params, tokens, mask, 16)
  valid = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(hidden)[valid], np.asarray(want_hidden)[valid], atol=1e-5)
  valid_slots = np.asarray(want_cache.valid)
  by_slot = lambda c, name: np.swapaxes(np.asarray(getattr(c, name)), 2, 3)  # [L, B, S, K, Dh]
  for name in ("k", "v"):  # padding slots hold undefined values in both
    np.testing.assert_allclose(
        by_slot(cache, name)[:, np.asarray(cache.valid)],
        by_slot(want_cache, name)[:, valid_slots],
        atol=1e-5,
    )
  for name in ("valid", "lengths", "index"):
    np.testing.assert_array_equal(getattr(cache, name), getattr(want_cache, name))


def test_unavailable_kernels_name_the_field():
  with pytest.raises(ValueError, match="model.attention_impl='splash' needs a TPU"):
    attention.resolve_impl("splash", jnp.bfloat16)
  with pytest.raises(ValueError, match="model.attention_impl='cudnn' needs an NVIDIA GPU"):
    attention.resolve_impl("cudnn", jnp.bfloat16)
  with pytest.raises(ValueError, match="model.attention_impl='flash'; allowed"):
    tiny_config(attention_impl="flash")
  assert attention.resolve_impl("auto", jnp.float32) == "dense"  # CPU
