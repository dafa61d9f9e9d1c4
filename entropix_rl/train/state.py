"""The train state: everything a run needs to continue exactly after a restore."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax

from entropix_rl import sharding


@flax.struct.dataclass
class TrainState:
  """A pytree of arrays; checkpointed whole by Orbax.

  Attributes:
    step: int32 scalar, optimizer phase steps done (SFT steps, then RL steps, counted separately
      by the loop that owns the state).
    params: the policy's param tree.
    opt_state: the optax state of `params`.
    rng: a PRNG key, split once per step.
    interventions: each stateful intervention's state by name (`interventions.init_states`; e.g. the
      adaptive entropy coefficient); an empty dict when none is active.
    ref_params: the frozen reference policy (for KL-to-reference losses and metrics), or None.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  interventions: Any = flax.struct.field(default_factory=dict)
  ref_params: Any = None


def create_train_state(
    params: Any,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    *,
    interventions: Any = None,
    ref_params: Any = None,
) -> TrainState:
  return TrainState(
      step=jax.numpy.zeros((), jax.numpy.int32),
      params=params,
      opt_state=optimizer.init(params),
      rng=rng,
      interventions=interventions or {},
      ref_params=ref_params,
  )


def create_train_state_on_mesh(
    params: Any,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Any,
    *,
    interventions: Any = None,
    with_reference: bool = False,
) -> tuple[TrainState, Any]:
  """`create_train_state` under jit, its output placed by `sharding.state_shardings`.

  The optimizer state and the reference copy are created on the devices in their shardings
  (never gathered on one device), and `params` (best already placed, e.g. by `hf.load(...,
  shardings=...)`; otherwise they are moved there first) are donated to the state.

  Returns:
    (state, state shardings).
  """

  def build(params):
    ref = jax.tree.map(jax.numpy.copy, params) if with_reference else None
    return create_train_state(params, optimizer, rng, interventions=interventions, ref_params=ref)

  state_sharding = sharding.state_shardings(jax.eval_shape(build, params), optimizer, mesh)
  fn = jax.jit(
      build, in_shardings=(state_sharding.params,), out_shardings=state_sharding, donate_argnums=0
  )
  return fn(params), state_sharding
