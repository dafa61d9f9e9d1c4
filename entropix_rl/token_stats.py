"""Per-token log-probs and full-vocabulary entropies from hidden states, chunked.

With `z = h·W / T` (hidden state `h`, unembedding `W`, temperature `T`):

    logp_t    = z_t[y_t] − logsumexp(z_t)
    entropy_t = logsumexp(z_t) − Σ_v softmax(z_t)_v · z_t,v          (nats)

as docs/interventions.md defines ℓ_t and H_t (logits divided by the rollout temperature).

At a 152k vocabulary a `[tokens, vocab]` float32 logits array is 0.6 MB per token (10 GB for
16k tokens), and autodiff of the plain formula keeps several of them. `token_logp_entropy`
loops over token chunks and, inside each, over vocabulary blocks with an online logsumexp, so
the forward pass holds one `[token_chunk, vocab_chunk]` block at a time and saves only two
floats per token (`logsumexp(z)` and `E_softmax(z)[z]`). Its custom VJP recomputes each block:

    ∂logp/∂z    = onehot(y) − p
    ∂entropy/∂z = −p ⊙ (z − E_p[z])

and loops vocabulary blocks outside token chunks, so the unembedding gradient is written one
column block at a time (a `[D, vocab_chunk]` float32 accumulator) and the hidden-state gradient
accumulates in a `[tokens, D]` float32 array. When the entropy output carries no cotangent
(e.g. it went through `stop_gradient`), its backward work is skipped.
"""

from __future__ import annotations

import functools

import jax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
import jax.numpy as jnp


def vocab_block(
    unembed: jax.Array, index: jax.Array | int, vocab_chunk: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Block `index` of the vocabulary, without padding the unembedding.

  Block `i` covers columns `[i·c, (i+1)·c)`; the last block is shifted left to end at `V`
  (so it may overlap its predecessor), and `owned` marks the columns the block counts.

  Args:
    unembed: `[D, V]` unembedding.
    index: block index in `[0, ceil(V / vocab_chunk))`.
    vocab_chunk: block width `c <= V`.

  Returns:
    (`[D, c]` columns, `[c]` int32 vocabulary ids of those columns, `[c]` bool owned mask).
  """
  v = unembed.shape[1]
  start = jnp.minimum(index * vocab_chunk, v - vocab_chunk)
  block = jax.lax.dynamic_slice_in_dim(unembed, start, vocab_chunk, axis=1)
  cols = start + jnp.arange(vocab_chunk, dtype=jnp.int32)
  return block, cols, cols >= index * vocab_chunk


def block_logits(hidden: jax.Array, unembed: jax.Array, temperature: float) -> jax.Array:
  """`[n, D] × [D, c] → [n, c]` float32 `h·W / T`, accumulated in float32.

  Both operands are cast to their promoted dtype (bfloat16 × bfloat16 stays bfloat16 on the
  MXU/tensor cores; a float32 operand promotes the other).
  """
  dtype = jnp.promote_types(hidden.dtype, unembed.dtype)
  z = jnp.einsum(
      "nd,dv->nv", hidden.astype(dtype), unembed.astype(dtype), preferred_element_type=jnp.float32
  )
  return z if temperature == 1.0 else z / temperature


def _validate(
    hidden: jax.Array,
    unembed: jax.Array,
    targets: jax.Array,
    temperature: float,
    token_chunk: int,
    vocab_chunk: int | None,
) -> None:
  if hidden.ndim < 1 or unembed.ndim != 2 or hidden.shape[-1] != unembed.shape[0]:
    raise ValueError(
        f"hidden {hidden.shape} must be [..., D] and unembed {unembed.shape} [D, V] "
        "with the same D"
    )
  if targets.shape != hidden.shape[:-1]:
    raise ValueError(
        f"targets {targets.shape} must have the leading shape of hidden " f"{hidden.shape[:-1]}"
    )
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets dtype {targets.dtype} must be an integer type")
  if not temperature > 0:
    raise ValueError(f"temperature={temperature} must be > 0")
  if token_chunk < 1:
    raise ValueError(f"token_chunk={token_chunk} must be >= 1")
  if vocab_chunk is not None and vocab_chunk < 1:
    raise ValueError(f"vocab_chunk={vocab_chunk} must be None (whole vocabulary) or >= 1")


def _chunk_forward(
    hidden: jax.Array,
    unembed: jax.Array,
    targets: jax.Array,
    temperature: float,
    vocab_chunk: int,
    with_entropy: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One token chunk `[n, D]` → (`[n]` target logit, `[n]` logsumexp, `[n]` E_p[z]), online over V."""
  n = hidden.shape[0]
  num_blocks = -(-unembed.shape[1] // vocab_chunk)

  def body(carry, index):
    running_max, sum_exp, sum_exp_z, target_logit = carry
    w, cols, owned = vocab_block(unembed, index, vocab_chunk)
    z = jnp.where(owned, block_logits(hidden, w, temperature), -jnp.inf)
    new_max = jnp.maximum(running_max, z.max(axis=-1))
    rescale = jnp.exp(running_max - new_max)
    e = jnp.exp(z - new_max[:, None])
    sum_exp = sum_exp * rescale + e.sum(axis=-1)
    if with_entropy:
      sum_exp_z = sum_exp_z * rescale + jnp.where(owned, e * z, 0.0).sum(axis=-1)
    hit = (cols == targets[:, None]) & owned
    target_logit = target_logit + jnp.where(hit, z, 0.0).sum(axis=-1)
    return (new_max, sum_exp, sum_exp_z, target_logit), None

  init = (jnp.full((n,), -jnp.inf, jnp.float32),) + (jnp.zeros((n,), jnp.float32),) * 3
  (running_max, sum_exp, sum_exp_z, target_logit), _ = jax.lax.scan(
      body, init, jnp.arange(num_blocks)
  )
  lse = running_max + jnp.log(sum_exp)
  return target_logit, lse, sum_exp_z / sum_exp


def _forward(h_chunks, unembed, targets, temperature, vocab_chunk, with_entropy):
  target_logit, lse, mean_z = jax.lax.map(
      lambda xs: _chunk_forward(xs[0], unembed, xs[1], temperature, vocab_chunk, with_entropy),
      (h_chunks, targets),
  )
  logp = target_logit - lse
  entropy = lse - mean_z if with_entropy else jnp.zeros_like(logp)
  return logp, entropy, lse, mean_z


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _chunked(
    h_chunks: jax.Array,
    unembed: jax.Array,
    targets: jax.Array,
    temperature: float,
    vocab_chunk: int,
    with_entropy: bool,
) -> tuple[jax.Array, jax.Array]:
  """`[K, n, D]` chunks → (`[K, n]` logp, `[K, n]` entropy)."""
  logp, entropy, _, _ = _forward(h_chunks, unembed, targets, temperature, vocab_chunk, with_entropy)
  return logp, entropy


def _chunked_fwd(h_chunks, unembed, targets, temperature, vocab_chunk, with_entropy):
  h_chunks, unembed, targets = (
      x.value if isinstance(x, CustomVJPPrimal) else x for x in (h_chunks, unembed, targets)
  )
  logp, entropy, lse, mean_z = _forward(
      h_chunks, unembed, targets, temperature, vocab_chunk, with_entropy
  )
  return (logp, entropy), (h_chunks, unembed, targets, lse, mean_z)


def _chunked_bwd(temperature, vocab_chunk, with_entropy, residuals, cotangents):
  h_chunks, unembed, targets, lse, mean_z = residuals
  g_logp, g_entropy = (
      None if isinstance(g, SymbolicZero) else g.astype(jnp.float32) for g in cotangents
  )
  if not with_entropy:
    g_entropy = None
  d = h_chunks.shape[-1]
  v = unembed.shape[1]
  if g_logp is None and g_entropy is None:
    return jnp.zeros_like(h_chunks), jnp.zeros_like(unembed), None
  dtype = jnp.promote_types(h_chunks.dtype, unembed.dtype)
  zeros = jnp.zeros_like(lse)
  g_logp = zeros if g_logp is None else g_logp
  g_entropy_or_zeros = zeros if g_entropy is None else g_entropy

  def vocab_step(carry, index):
    d_hidden, d_unembed = carry
    w, cols, owned = vocab_block(unembed, index, vocab_chunk)

    def token_step(d_w, xs):
      h, y, lse_c, mean_c, gl, ge, dh = xs
      z = block_logits(h, w, temperature)
      p = jnp.where(owned, jnp.exp(z - lse_c[:, None]), 0.0)
      dz = gl[:, None] * (((cols == y[:, None]) & owned) - p)
      if g_entropy is not None:
        dz = dz - ge[:, None] * p * (z - mean_c[:, None])
      if temperature != 1.0:
        dz = dz / temperature
      dz = dz.astype(dtype)
      dh = dh + jnp.einsum("nv,dv->nd", dz, w.astype(dtype), preferred_element_type=jnp.float32)
      d_w = d_w + jnp.einsum("nd,nv->dv", h.astype(dtype), dz, preferred_element_type=jnp.float32)
      return d_w, dh

    d_w, d_hidden = jax.lax.scan(
        token_step,
        jnp.zeros((d, vocab_chunk), jnp.float32),
        (h_chunks, targets, lse, mean_z, g_logp, g_entropy_or_zeros, d_hidden),
    )
    start = jnp.minimum(index * vocab_chunk, v - vocab_chunk)
    old = jax.lax.dynamic_slice_in_dim(d_unembed, start, vocab_chunk, axis=1)
    new = jnp.where(owned, d_w.astype(d_unembed.dtype), old)
    d_unembed = jax.lax.dynamic_update_slice_in_dim(d_unembed, new, start, axis=1)
    return (d_hidden, d_unembed), None

  init = (jnp.zeros(h_chunks.shape, jnp.float32), jnp.zeros_like(unembed))
  (d_hidden, d_unembed), _ = jax.lax.scan(vocab_step, init, jnp.arange(-(-v // vocab_chunk)))
  return d_hidden.astype(h_chunks.dtype), d_unembed, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)


def token_logp_entropy(
    hidden: jax.Array,
    unembed: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    token_chunk: int = 1024,
    vocab_chunk: int | None = 32768,
    with_entropy: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """Log-prob of each target token and the entropy of its full next-token distribution.

  `logp = log softmax(z)[target]`, `entropy = logsumexp(z) − Σ softmax(z)·z` with
  `z = h·W / T` (docs/interventions.md, "Notation"), computed chunk by chunk so that no `[tokens, V]` array
  exists in the forward or the backward pass (see the module docstring). Gradients flow to
  `hidden` and `unembed` through both outputs.

  Args:
    hidden: `[..., D]` final hidden states (float32 or bfloat16).
    unembed: `[D, V]` unembedding (float32 or bfloat16).
    targets: `[...]` integer token ids in `[0, V)` (out-of-range ids give a target logit of 0).
    temperature: divides the logits (the rollout temperature, as verl does); a Python float.
    token_chunk: tokens per chunk. Token counts that it does not divide are padded internally.
    vocab_chunk: vocabulary columns per block (clipped to V); None processes the whole
      vocabulary at once. Peak temporary memory is a few `[token_chunk, vocab_chunk]` float32
      blocks plus, in the backward pass, a `[D, vocab_chunk]` and a `[tokens, D]` float32
      accumulator. At V = 151936, D = 3584 the default 32768 keeps the backward's unembedding
      accumulator at 0.47 GB instead of 2.2 GB for the whole vocabulary.
    with_entropy: False skips the entropy work and returns zeros for it.

  Returns:
    (logp `[...]`, entropy `[...]`), float32, nats.

  Raises:
    ValueError: on mismatched shapes, non-integer targets, temperature <= 0 or chunk sizes < 1.
  """
  _validate(hidden, unembed, targets, temperature, token_chunk, vocab_chunk)
  temperature = float(temperature)
  lead, d = hidden.shape[:-1], hidden.shape[-1]
  flat_h = hidden.reshape(-1, d)
  flat_t = targets.reshape(-1).astype(jnp.int32)
  n = flat_h.shape[0]
  if n == 0:
    return jnp.zeros(lead, jnp.float32), jnp.zeros(lead, jnp.float32)
  chunk = min(token_chunk, n)
  pad = (-n) % chunk
  h_chunks = jnp.pad(flat_h, ((0, pad), (0, 0))).reshape(-1, chunk, d)
  t_chunks = jnp.pad(flat_t, (0, pad)).reshape(-1, chunk)
  v_chunk = unembed.shape[1] if vocab_chunk is None else min(vocab_chunk, unembed.shape[1])
  logp, entropy = _chunked(h_chunks, unembed, t_chunks, temperature, v_chunk, with_entropy)
  return logp.reshape(-1)[:n].reshape(lead), entropy.reshape(-1)[:n].reshape(lead)


def naive_logp_entropy(
    hidden: jax.Array,
    unembed: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    token_chunk: int = 1024,
    vocab_chunk: int | None = 32768,
    with_entropy: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """`token_logp_entropy` with the whole `[tokens, V]` float32 logits materialised.

  The reference and benchmark baseline; plain autodiff. `token_chunk` and `vocab_chunk` are
  accepted for a matching signature and ignored.

  Returns:
    (logp `[...]`, entropy `[...]`), float32, nats.
  """
  del token_chunk, vocab_chunk
  _validate(hidden, unembed, targets, temperature, 1, None)
  lead, d = hidden.shape[:-1], hidden.shape[-1]
  z = block_logits(hidden.reshape(-1, d), unembed, float(temperature))
  lse = jax.nn.logsumexp(z, axis=-1)
  logp = jnp.take_along_axis(z, targets.reshape(-1, 1).astype(jnp.int32), axis=-1)[:, 0] - lse
  if with_entropy:
    entropy = lse - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)
  else:
    entropy = jnp.zeros_like(logp)
  return logp.reshape(lead), entropy.reshape(lead)


def logit_features(
    hidden: jax.Array,
    unembed: jax.Array,
    targets: jax.Array,
    fns: tuple,
    *,
    temperature: float = 1.0,
    token_chunk: int = 256,
) -> tuple[jax.Array, ...]:
  """Per-token features computed from the full logits, chunked over tokens.

  For interventions that need more of the next-token distribution than its log-prob and
  entropy (a min-p proxy, a top-p entropy). Each chunk forms its `[token_chunk, V]` float32
  logits `h·W` (temperature 1), applies every `fn(logits, targets, temperature) -> [n]`, and is
  rematerialised in the backward pass, so peak memory is one chunk's logits (and their
  cotangent) whatever the token count. Gradients flow to `hidden` and `unembed`.

  Args:
    hidden: `[..., D]` hidden states; unembed: `[D, V]`; targets: `[...]` int token ids.
    fns: feature functions (see `interventions.registry.TokenFeature`).
    temperature: the rollout temperature, passed to each function.
    token_chunk: tokens per chunk.

  Returns:
    One `[...]` float32 array per function.
  """
  _validate(hidden, unembed, targets, temperature, token_chunk, None)
  lead, d = hidden.shape[:-1], hidden.shape[-1]
  flat_h, flat_t = hidden.reshape(-1, d), targets.reshape(-1).astype(jnp.int32)
  n = flat_h.shape[0]
  if n == 0 or not fns:
    return tuple(jnp.zeros(lead, jnp.float32) for _ in fns)
  chunk = min(token_chunk, n)
  pad = (-n) % chunk
  h_chunks = jnp.pad(flat_h, ((0, pad), (0, 0))).reshape(-1, chunk, d)
  t_chunks = jnp.pad(flat_t, (0, pad)).reshape(-1, chunk)

  @jax.checkpoint
  def one_chunk(h, t, w):
    logits = block_logits(h, w, 1.0)
    return jnp.stack([fn(logits, t, float(temperature)).astype(jnp.float32) for fn in fns])

  out = jax.lax.map(lambda xs: one_chunk(xs[0], xs[1], unembed), (h_chunks, t_chunks))
  out = out.transpose(1, 0, 2).reshape(len(fns), -1)[:, :n]
  return tuple(row.reshape(lead) for row in out)
