"""Covariance dynamics of the policy's entropy (Cui et al. 2025, arXiv 2505.22617, §3).

For a softmax policy with logits `z` at a state, a first-order Taylor expansion of the entropy
gives (Lemma 1 of the paper; docs/interventions.md)

    H(z + Δz) − H(z) ≈ −Cov_{a~π}(log π(a), Δz(a)),

which for vanilla policy gradient (`Δz = η·π·A`) and natural policy gradient (`Δz = η·A`) gives
the paper's Theorems 1 and 2. This module holds the token-level centred covariance used by
Clip-Cov / KL-Cov selection, its per-step summary statistics, the
paper's response-level (bandit) covariance, and the predicted-vs-measured entropy change of
an update, chunked over tokens and vocabulary like `entropix_rl.token_stats`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from entropix_rl.token_stats import block_logits, vocab_block

_QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)


def token_covariance(logp: jax.Array, advantages: jax.Array, mask: jax.Array) -> jax.Array:
  """Centred per-token cross-products `c_t = (A_t - Ā)(ℓ_t - ℓ̄)`.

  The means are taken over the valid tokens of the whole batch passed in (under jit with a
  sharded batch, that is the global batch). No `1/N` factor, no gradient.

  Args:
    logp: `[batch, time]` log-probs of the chosen tokens (nats).
    advantages: `[batch, time]` per-token advantages.
    mask: `[batch, time]` 1 for valid (response) tokens, 0 elsewhere.

  Returns:
    `[batch, time]` float32 centred products, 0 at masked tokens.
  """
  logp = jax.lax.stop_gradient(logp).astype(jnp.float32)
  advantages = jax.lax.stop_gradient(advantages).astype(jnp.float32)
  m = mask.astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  adv_mean = (advantages * m).sum() / n
  logp_mean = (logp * m).sum() / n
  return (advantages - adv_mean) * (logp - logp_mean) * m


def entropy(logits: jax.Array) -> jax.Array:
  """Entropy `H = logsumexp(z) − Σ softmax(z)·z` of softmax over the last axis.

  Args:
    logits: `[..., V]` logits `z`.

  Returns:
    `[...]` float32 entropies in nats.
  """
  z = logits.astype(jnp.float32)
  return jax.nn.logsumexp(z, axis=-1) - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)


def predicted_entropy_change(logits: jax.Array, delta_logits: jax.Array) -> jax.Array:
  """First-order entropy change `ΔH ≈ −Cov_{a~softmax(z)}(log π(a), Δz(a))` (Cui et al. Lemma 1).

  With `Δz = η·π·A` this is Theorem 1 (vanilla PG), with `Δz = η·A` Theorem 2 (natural PG).
  The covariance is the exact expectation under `π = softmax(z)` (not a sample estimate),
  computed centred: `Σ_a π_a (log π_a − E_π[log π])(Δz_a − E_π[Δz])`.

  Args:
    logits: `[..., V]` logits `z` before the update.
    delta_logits: `[..., V]` change of the logits `Δz`.

  Returns:
    `[...]` float32 predicted `H(z + Δz) − H(z)` in nats.
  """
  if logits.shape != delta_logits.shape:
    raise ValueError(
        f"logits {logits.shape} and delta_logits {delta_logits.shape} must have " "the same shape"
    )
  log_pi = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  delta = delta_logits.astype(jnp.float32)
  pi = jnp.exp(log_pi)
  centred_log_pi = log_pi - jnp.sum(pi * log_pi, axis=-1, keepdims=True)
  centred_delta = delta - jnp.sum(pi * delta, axis=-1, keepdims=True)
  return -jnp.sum(pi * centred_log_pi * centred_delta, axis=-1)


def _chunk_entropy_change(
    h0: jax.Array, w0: jax.Array, h1: jax.Array, w1: jax.Array, temperature: float, vocab_chunk: int
) -> tuple[jax.Array, jax.Array]:
  """One token chunk `[n, D]` → (`[n]` predicted, `[n]` measured), online over the vocabulary.

  Under `p0 = softmax(z0)` it merges per-block weight sums, means of `z0` and `Δz` and their
  co-moment with the pairwise (Chan et al.) update, so the covariance is never formed as a
  difference of raw second moments; `p1` needs only its logsumexp and `E_p1[z1]`.
  """
  n = h0.shape[0]
  num_blocks = -(-w0.shape[1] // vocab_chunk)

  def body(carry, index):
    max0, weight0, mean_z0, mean_dz, comoment, max1, sum_exp1, sum_exp_z1 = carry
    block0, _, owned = vocab_block(w0, index, vocab_chunk)
    block1, _, _ = vocab_block(w1, index, vocab_chunk)
    z0 = block_logits(h0, block0, temperature)
    z1 = block_logits(h1, block1, temperature)
    dz = z1 - z0

    new_max0 = jnp.maximum(max0, jnp.where(owned, z0, -jnp.inf).max(axis=-1))
    e0 = jnp.where(owned, jnp.exp(z0 - new_max0[:, None]), 0.0)
    w_block = e0.sum(axis=-1)
    mz_block = (e0 * z0).sum(axis=-1) / w_block
    md_block = (e0 * dz).sum(axis=-1) / w_block
    c_block = (e0 * (z0 - mz_block[:, None]) * (dz - md_block[:, None])).sum(axis=-1)
    rescale0 = jnp.exp(max0 - new_max0)
    w_old = weight0 * rescale0
    weight0 = w_old + w_block
    frac = w_block / weight0
    delta_z, delta_d = mz_block - mean_z0, md_block - mean_dz
    mean_z0 = mean_z0 + delta_z * frac
    mean_dz = mean_dz + delta_d * frac
    comoment = comoment * rescale0 + c_block + delta_z * delta_d * w_old * frac

    new_max1 = jnp.maximum(max1, jnp.where(owned, z1, -jnp.inf).max(axis=-1))
    e1 = jnp.where(owned, jnp.exp(z1 - new_max1[:, None]), 0.0)
    rescale1 = jnp.exp(max1 - new_max1)
    sum_exp1 = sum_exp1 * rescale1 + e1.sum(axis=-1)
    sum_exp_z1 = sum_exp_z1 * rescale1 + (e1 * z1).sum(axis=-1)
    return (new_max0, weight0, mean_z0, mean_dz, comoment, new_max1, sum_exp1, sum_exp_z1), None

  neg_inf = jnp.full((n,), -jnp.inf, jnp.float32)
  zeros = jnp.zeros((n,), jnp.float32)
  init = (neg_inf, zeros, zeros, zeros, zeros, neg_inf, zeros, zeros)
  (max0, weight0, mean_z0, _, comoment, max1, sum_exp1, sum_exp_z1), _ = jax.lax.scan(
      body, init, jnp.arange(num_blocks)
  )
  entropy0 = max0 + jnp.log(weight0) - mean_z0
  entropy1 = max1 + jnp.log(sum_exp1) - sum_exp_z1 / sum_exp1
  return -comoment / weight0, entropy1 - entropy0


def entropy_change_from_hidden(
    hidden_before: jax.Array,
    unembed_before: jax.Array,
    hidden_after: jax.Array,
    unembed_after: jax.Array,
    *,
    temperature: float = 1.0,
    token_chunk: int = 1024,
    vocab_chunk: int | None = 32768,
) -> tuple[jax.Array, jax.Array]:
  """Predicted (first-order) and measured entropy change of an update, per token.

  With `z0 = h_before·W_before / T` and `z1 = h_after·W_after / T` at the same states (the same
  token prefixes teacher-forced through the model before and after the update):

      predicted = −Cov_{a~softmax(z0)}(log softmax(z0)_a, (z1 − z0)_a)     (Lemma 1)
      measured  = H(softmax(z1)) − H(softmax(z0))

  Chunked over tokens and vocabulary blocks like `token_stats.token_logp_entropy`, so no
  `[tokens, V]` array is formed. No gradient flows (a metric).

  Args:
    hidden_before: `[..., D]` hidden states under the pre-update params.
    unembed_before: `[D, V]` pre-update unembedding.
    hidden_after: `[..., D]` hidden states under the post-update params.
    unembed_after: `[D, V]` post-update unembedding.
    temperature: divides both logits (the rollout temperature); a Python float.
    token_chunk: tokens per chunk (token counts it does not divide are padded internally).
    vocab_chunk: vocabulary columns per block; None for the whole vocabulary at once.

  Returns:
    (predicted `[...]`, measured `[...]`), float32, nats.

  Raises:
    ValueError: on mismatched shapes, temperature <= 0 or chunk sizes < 1.
  """
  if hidden_before.shape != hidden_after.shape or unembed_before.shape != unembed_after.shape:
    raise ValueError(
        f"hidden_before {hidden_before.shape} / hidden_after {hidden_after.shape} "
        f"and unembed_before {unembed_before.shape} / unembed_after "
        f"{unembed_after.shape} must match"
    )
  if unembed_before.ndim != 2 or hidden_before.shape[-1] != unembed_before.shape[0]:
    raise ValueError(
        f"hidden {hidden_before.shape} must be [..., D] and unembed "
        f"{unembed_before.shape} [D, V] with the same D"
    )
  if not temperature > 0:
    raise ValueError(f"temperature={temperature} must be > 0")
  if token_chunk < 1 or (vocab_chunk is not None and vocab_chunk < 1):
    raise ValueError(
        f"token_chunk={token_chunk} must be >= 1 and vocab_chunk={vocab_chunk} " "None or >= 1"
    )
  lead, d = hidden_before.shape[:-1], hidden_before.shape[-1]
  v = unembed_before.shape[1]
  v_chunk = v if vocab_chunk is None else min(vocab_chunk, v)
  h0, w0, h1, w1 = (
      jax.lax.stop_gradient(x) for x in (hidden_before, unembed_before, hidden_after, unembed_after)
  )
  h0, h1 = h0.reshape(-1, d), h1.reshape(-1, d)
  n = h0.shape[0]
  if n == 0:
    return jnp.zeros(lead, jnp.float32), jnp.zeros(lead, jnp.float32)
  chunk = min(token_chunk, n)
  pad = (-n) % chunk
  h0, h1 = (jnp.pad(h, ((0, pad), (0, 0))).reshape(-1, chunk, d) for h in (h0, h1))
  predicted, measured = jax.lax.map(
      lambda xs: _chunk_entropy_change(xs[0], w0, xs[1], w1, float(temperature), v_chunk), (h0, h1)
  )
  return predicted.reshape(-1)[:n].reshape(lead), measured.reshape(-1)[:n].reshape(lead)


def _fraction_name(fraction: float) -> str:
  return f"cov/top_{fraction * 100:g}pct"


def covariance_metrics(
    logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    top_fracs: Sequence[float] = (0.0002, 0.002),
) -> dict[str, jax.Array]:
  """Summary statistics of the centred token covariance `c_t` (`token_covariance`).

  Over the N valid tokens: `cov/mean = (1/N) Σ c_t` (the batch covariance of ℓ and A, ddof=0),
  quantiles `cov/q01, q25, q50, q75, q99` (linear interpolation, as `numpy.quantile`),
  `cov/frac_positive`, and for each fraction f in `top_fracs` the mean of the k largest `c_t`
  with `k = max(1, floor(f·N))` (`cov/top_0.02pct`, `cov/top_0.2pct` by default: the token
  sets Clip-Cov/KL-Cov act on, Cui et al. Table 1). Static shapes, so
  it jits; every entry is 0 when no token is valid.

  Args:
    logp: `[batch, time]` log-probs of the chosen tokens.
    advantages: `[batch, time]` per-token advantages.
    mask: `[batch, time]` 1 for valid tokens.
    top_fracs: fractions in (0, 1] of the valid tokens for the top-covariance means.

  Returns:
    dict of float32 scalars.

  Raises:
    ValueError: if a fraction lies outside (0, 1].
  """
  for fraction in top_fracs:
    if not 0 < fraction <= 1:
      raise ValueError(f"top_fracs entries must lie in (0, 1], got {fraction}")
  cov = token_covariance(logp, advantages, mask).reshape(-1)
  valid = mask.reshape(-1) > 0
  count = valid.sum()
  any_valid = count > 0
  n = jnp.maximum(count, 1).astype(jnp.float32)
  metrics = {
      "cov/mean": jnp.where(valid, cov, 0.0).sum() / n,
      "cov/frac_positive": (valid & (cov > 0)).sum() / n,
  }
  quantiles = jnp.nanquantile(jnp.where(valid, cov, jnp.nan), jnp.asarray(_QUANTILES))
  for q, value in zip(_QUANTILES, quantiles):
    metrics[f"cov/q{round(q * 100):02d}"] = jnp.where(any_valid, value, 0.0)
  descending = -jnp.sort(jnp.where(valid, -cov, jnp.inf))
  cumulative = jnp.cumsum(jnp.where(jnp.isfinite(descending), descending, 0.0))
  for fraction in top_fracs:
    k = jnp.clip(jnp.floor(fraction * count.astype(jnp.float32)).astype(jnp.int32), 1, None)
    metrics[_fraction_name(fraction)] = jnp.where(any_valid, cumulative[k - 1] / k, 0.0)
  return metrics


def response_covariance(
    logp: jax.Array, advantages: jax.Array, mask: jax.Array, group_ids: jax.Array, num_groups: int
) -> tuple[jax.Array, jax.Array]:
  """The paper's bandit-view covariance per prompt group (Cui et al. §3.3).

  Each response `y_i` is one action: `ℓ̄_i = (1/|y_i|) Σ_t m_t ℓ_t` (length-normalised log-prob,
  Eq. 9) and `A_i` its advantage. Within group g (the K responses of one prompt)

      Cov_g = (1/K_g) Σ_{i∈g} (ℓ̄_i − mean_g ℓ̄)(A_i − mean_g A)        (ddof = 0)

  over the responses with at least one valid token (K_g of them). Groups with fewer than two
  such responses (singletons) give 0. The mean is over the groups with K_g ≥ 2 (0 if none).
  Eq. 8's normalisation was not checked against the PDF [UNVERIFIED]; ddof = 0 matches
  `token_covariance`.

  Args:
    logp: `[B, T]` log-probs of the chosen tokens.
    advantages: `[B]` response advantages, or `[B, T]` per-token advantages; for `[B, T]` the
      response advantage is the mean over its valid tokens (for GRPO's broadcast sequence
      advantage that is the value at any valid token).
    mask: `[B, T]` 1 for valid tokens.
    group_ids: `[B]` int group (prompt) index in `[0, num_groups)`.
    num_groups: number of groups (static).

  Returns:
    (`[num_groups]` float32 per-group covariance, float32 scalar mean over groups).
  """
  if logp.ndim != 2 or mask.shape != logp.shape:
    raise ValueError(f"logp {logp.shape} and mask {mask.shape} must both be [B, T]")
  if advantages.shape not in (logp.shape, logp.shape[:1]):
    raise ValueError(f"advantages {advantages.shape} must be [B] or [B, T] = {logp.shape}")
  if group_ids.shape != logp.shape[:1]:
    raise ValueError(f"group_ids {group_ids.shape} must be [B] = {logp.shape[:1]}")
  m = mask.astype(jnp.float32)
  lengths = m.sum(axis=1)
  has_tokens = (lengths > 0).astype(jnp.float32)
  safe_len = jnp.maximum(lengths, 1.0)
  logp = jax.lax.stop_gradient(logp).astype(jnp.float32)
  advantages = jax.lax.stop_gradient(advantages).astype(jnp.float32)
  seq_logp = (logp * m).sum(axis=1) / safe_len
  seq_adv = advantages if advantages.ndim == 1 else (advantages * m).sum(axis=1) / safe_len

  def group_sum(x):
    return jax.ops.segment_sum(x * has_tokens, group_ids, num_segments=num_groups)

  counts = group_sum(jnp.ones_like(seq_logp))
  safe_counts = jnp.maximum(counts, 1.0)
  logp_mean = group_sum(seq_logp) / safe_counts
  adv_mean = group_sum(seq_adv) / safe_counts
  centred = (seq_logp - logp_mean[group_ids]) * (seq_adv - adv_mean[group_ids])
  multi = counts >= 2
  per_group = jnp.where(multi, group_sum(centred) / safe_counts, 0.0)
  mean = per_group.sum() / jnp.maximum(multi.sum(), 1)
  return per_group, mean
