"""The records that registered interventions take and return. All arrays are `[B, T]`."""

from __future__ import annotations

from typing import NamedTuple

import jax


class LossInputs(NamedTuple):
  """One `policy_loss` call's inputs, after casting and stop-gradients.

  Attributes:
    logp: current log-probs ℓ of the chosen tokens (float32, differentiable).
    old_logp: behaviour log-probs ℓ^old (float32, constant).
    advantages: per-token advantages A (float32, constant; after advantage shapers).
    mask: response mask m (float32 0/1).
    rng: PRNG key for random selection, or None.
    ref_logp: reference-policy log-probs (constant), or None.
    entropy: full-vocabulary entropy H (float32; differentiable only when a regulariser needs
      it), or None when no intervention reads it.
    entropy_coef: traced scalar overriding the fixed entropy-bonus coefficient, or None.
  """

  logp: jax.Array
  old_logp: jax.Array
  advantages: jax.Array
  mask: jax.Array
  rng: jax.Array | None = None
  ref_logp: jax.Array | None = None
  entropy: jax.Array | None = None
  entropy_coef: jax.Array | None = None


class SurrogateOutput(NamedTuple):
  """What a surrogate returns.

  Attributes:
    per_token_loss: the per-token policy-gradient loss L_t.
    loss_mask: float32 weights the aggregation uses (`m`, or `m ⊙ s` for selectors that
      aggregate over their pick only).
    selected: bool, the tokens the intervention picked (all False if it picks none).
    clipped: bool, tokens whose PPO clip bound is active (`L2 > L1`); all False without clipping.
  """

  per_token_loss: jax.Array
  loss_mask: jax.Array
  selected: jax.Array
  clipped: jax.Array


class RegulariserOutput(NamedTuple):
  """What a regulariser returns: `loss` is added to the total, `metric` goes to `aux[name]`."""

  loss: jax.Array
  metric: jax.Array
