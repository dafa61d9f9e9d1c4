"""Chunked log-prob/entropy against a float64 NumPy reference written from the formulas."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from entropix_rl import token_stats


def reference(h, w, y, temperature):
  """float64 `logp`, `entropy` and the softmax `p`, logits `z` of `z = h·W / T`."""
  z = np.asarray(h, np.float64) @ np.asarray(w, np.float64) / temperature
  lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
  p = np.exp(z - lse[:, None])
  logp = z[np.arange(len(y)), y] - lse
  entropy = -(p * np.log(p)).sum(-1)
  return logp, entropy, p, z


def reference_grads(h, w, y, temperature, g_logp, g_entropy):
  """float64 (dL/dh, dL/dW) for `L = Σ g_logp·logp + Σ g_entropy·entropy`.

  `∂logp/∂z = onehot(y) − p`, `∂H/∂z = −p ⊙ (log p + H)`; `z = h·W / T`.
  """
  _, ent, p, _ = reference(h, w, y, temperature)
  onehot = np.eye(w.shape[1])[y]
  dz = g_logp[:, None] * (onehot - p) - g_entropy[:, None] * p * (np.log(p) + ent[:, None])
  dz /= temperature
  return dz @ np.asarray(w, np.float64).T, np.asarray(h, np.float64).T @ dz


def make_inputs(seed, n, d, v, scale=1.0):
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(n, d)).astype(np.float32)
  w = (scale * rng.normal(size=(d, v)) / np.sqrt(d)).astype(np.float32)
  y = rng.integers(0, v, size=n).astype(np.int32)
  return h, w, y


CHUNKINGS = [
    dict(token_chunk=4, vocab_chunk=7),  # neither divides (21 tokens, 50 columns)
    dict(token_chunk=21, vocab_chunk=None),  # one token chunk, whole vocabulary
    dict(token_chunk=5, vocab_chunk=50),  # vocab block = V
    dict(token_chunk=100, vocab_chunk=64),  # both larger than the input
    dict(token_chunk=1, vocab_chunk=1),
]


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_values_match_float64_reference_and_naive(chunking, temperature):
  h, w, y = make_inputs(0, 21, 16, 50, scale=4.0)
  ref_logp, ref_ent, _, _ = reference(h, w, y, temperature)
  h3, y3 = h.reshape(3, 7, 16), y.reshape(3, 7)
  logp, ent = jax.jit(
      lambda a, b, c: token_stats.token_logp_entropy(a, b, c, temperature=temperature, **chunking)
  )(h3, w, y3)
  assert logp.shape == ent.shape == (3, 7) and logp.dtype == ent.dtype == jnp.float32
  np.testing.assert_allclose(logp.reshape(-1), ref_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent.reshape(-1), ref_ent, rtol=1e-5, atol=1e-5)
  naive_logp, naive_ent = token_stats.naive_logp_entropy(h3, w, y3, temperature=temperature)
  np.testing.assert_allclose(naive_logp.reshape(-1), ref_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(naive_ent.reshape(-1), ref_ent, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunking", CHUNKINGS[:3])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_gradients_match_formula_and_naive(chunking, temperature):
  h, w, y = make_inputs(1, 21, 16, 50, scale=3.0)
  rng = np.random.default_rng(2)
  g_logp = rng.normal(size=21).astype(np.float32)
  g_ent = rng.normal(size=21).astype(np.float32)

  def loss(fn):
    def f(a, b):
      logp, ent = fn(a, b, y, temperature=temperature, **chunking)
      return (g_logp * logp).sum() + (g_ent * ent).sum()

    return f

  grads = jax.jit(jax.grad(loss(token_stats.token_logp_entropy), argnums=(0, 1)))(h, w)
  naive = jax.grad(loss(token_stats.naive_logp_entropy), argnums=(0, 1))(h, w)
  ref = reference_grads(h, w, y, temperature, g_logp, g_ent)
  for got, want, base in zip(grads, ref, naive):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, base, rtol=1e-4, atol=1e-5)


def test_stopped_entropy_and_without_entropy_give_logp_gradient_only():
  h, w, y = make_inputs(3, 10, 8, 30)
  chunking = dict(token_chunk=3, vocab_chunk=8)

  def stopped(a, b):
    logp, ent = token_stats.token_logp_entropy(a, b, y, **chunking)
    return logp.sum() + jax.lax.stop_gradient(ent).sum()

  def without(a, b):
    return token_stats.token_logp_entropy(a, b, y, with_entropy=False, **chunking)[0].sum()

  def both(a, b):
    return sum(x.sum() for x in token_stats.token_logp_entropy(a, b, y, **chunking))

  np.testing.assert_array_equal(
      token_stats.token_logp_entropy(h, w, y, with_entropy=False, **chunking)[1], 0.0
  )
  ref = reference_grads(h, w, y, 1.0, np.ones(10), np.zeros(10))
  for fn in (stopped, without):
    for got, want in zip(jax.grad(fn, argnums=(0, 1))(h, w), ref):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # The entropy's backward work is skipped when its cotangent is a symbolic zero.
  size = lambda fn: len(str(jax.make_jaxpr(jax.grad(fn, argnums=(0, 1)))(h, w)))
  assert size(stopped) < size(both)
  only_entropy = jax.grad(
      lambda a, b: token_stats.token_logp_entropy(a, b, y, **chunking)[1].sum(), argnums=(0, 1)
  )(h, w)
  for got, want in zip(only_entropy, reference_grads(h, w, y, 1.0, np.zeros(10), np.ones(10))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bfloat16_inputs():
  """bf16 operands: products are exact in f32, so values stay within 1e-4 of float64 on the
  rounded inputs; gradients (bf16 outputs, cotangent cast to bf16 for the matmuls) within 2%
  of the largest reference entry."""
  h, w, y = make_inputs(4, 24, 32, 40, scale=3.0)
  h16, w16 = h.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16)
  ref_logp, ref_ent, _, _ = reference(h16, w16, y, 0.8)
  chunking = dict(token_chunk=5, vocab_chunk=16, temperature=0.8)
  logp, ent = token_stats.token_logp_entropy(jnp.asarray(h16), jnp.asarray(w16), y, **chunking)
  assert logp.dtype == jnp.float32
  np.testing.assert_allclose(logp, ref_logp, atol=1e-4)
  np.testing.assert_allclose(ent, ref_ent, atol=1e-4)

  def loss(a, b):
    lp, en = token_stats.token_logp_entropy(a, b, y, **chunking)
    return lp.sum() - 0.5 * en.sum()

  dh, dw = jax.grad(loss, argnums=(0, 1))(jnp.asarray(h16), jnp.asarray(w16))
  assert dh.dtype == dw.dtype == jnp.bfloat16
  ref = reference_grads(h16, w16, y, 0.8, np.ones(24), -0.5 * np.ones(24))
  for got, want in zip((dh, dw), ref):
    err = np.abs(np.asarray(got, np.float64) - want).max()
    assert err <= 2e-2 * np.abs(want).max()


def test_chunked_compiles_to_less_temporary_memory():
  """The point of the module: no [tokens, V] float32 array in forward or backward."""
  args = (
      jax.ShapeDtypeStruct((512, 64), jnp.float32),
      jax.ShapeDtypeStruct((64, 4096), jnp.float32),
      jax.ShapeDtypeStruct((512,), jnp.int32),
  )

  def temp_bytes(fn, **kwargs):
    loss = lambda a, b, c: sum(x.sum() for x in fn(a, b, c, **kwargs))
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return step.lower(*args).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = 512 * 4096 * 4
  chunked = temp_bytes(token_stats.token_logp_entropy, token_chunk=64, vocab_chunk=512)
  assert chunked < logits_bytes / 2
  assert chunked * 4 < temp_bytes(token_stats.naive_logp_entropy)


def test_invalid_arguments_raise():
  h, w, y = make_inputs(5, 4, 8, 10)
  with pytest.raises(ValueError, match="temperature"):
    token_stats.token_logp_entropy(h, w, y, temperature=0.0)
  with pytest.raises(ValueError, match="token_chunk"):
    token_stats.token_logp_entropy(h, w, y, token_chunk=0)
  with pytest.raises(ValueError, match="vocab_chunk"):
    token_stats.token_logp_entropy(h, w, y, vocab_chunk=0)
  with pytest.raises(ValueError, match="targets"):
    token_stats.token_logp_entropy(h, w, y[:3])
  with pytest.raises(ValueError, match="unembed"):
    token_stats.token_logp_entropy(h, w.T, y)
