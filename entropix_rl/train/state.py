"""The train state: everything a run needs to continue exactly after a restore."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
  """A pytree of arrays; checkpointed whole by Orbax.

  Attributes:
    step: int32 scalar, optimizer phase steps done (SFT steps, then RL steps, counted separately
      by the loop that owns the state).
    params: the policy's param tree.
    opt_state: the optax state of `params`.
    rng: a PRNG key, split once per step.
    controller: state of loss-side controllers (e.g. the adaptive entropy coefficient);
      an empty dict when none is active.
    ref_params: the frozen reference policy (for KL-to-reference losses and metrics), or None.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  controller: Any = flax.struct.field(default_factory=dict)
  ref_params: Any = None


def create_train_state(params: Any, optimizer: optax.GradientTransformation, rng: jax.Array, *,
                       controller: Any = None, ref_params: Any = None) -> TrainState:
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                    opt_state=optimizer.init(params), rng=rng, controller=controller or {},
                    ref_params=ref_params)
