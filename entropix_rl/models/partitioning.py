"""Activation layout under a mesh context: batch rows over the data-parallel axes.

Jitted steps are traced inside `jax.set_mesh(mesh)` (`sharding.jit_on_mesh`); there
`constrain_rows` pins an activation's leading axis to `data x fsdp`, so XLA keeps FSDP's
layout (rows split over devices, each layer's weights gathered for its matmuls) instead of
re-sharding activations along the hidden axis to match the weights. Without a mesh context
(one device, tests) it does nothing.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def constrain_rows(x: jax.Array) -> jax.Array:
  """`x` with its leading axis over data x fsdp under the context mesh (else unchanged)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *([None] * (x.ndim - 1))))
