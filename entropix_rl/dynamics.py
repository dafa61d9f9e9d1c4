"""Covariance dynamics of the policy's entropy (Cui et al. 2025, arXiv 2505.22617, §3).

For a softmax policy the first-order entropy change at a state is
`ΔH ≈ -Cov_{a~π}(log π(a|s), Δz(s,a))`. This module holds the token-level covariance used
by Clip-Cov / KL-Cov selection and by the per-step dynamics metrics.
"""

import jax
import jax.numpy as jnp


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
