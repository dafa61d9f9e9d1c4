"""Device meshes, partition rules for the policy, and sharded train states.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism whose params, grads and
optimizer state are sharded), `tensor` (heads and MLP hidden units). Batches are sharded over
`data x fsdp` on their leading axis. Params are partitioned by their name in the tree, with
the rules of `models.families.PARTITION_RULES`: those every family shares
(`families.base.COMMON_RULES`) and those of the params a family adds (docs/design.md has the
tree):

| param | shape | spec |
| --- | --- | --- |
| embed | [V, D] | (tensor, fsdp) |
| lm_head | [D, V] | (fsdp, tensor) |
| q, k, v | [L, D, heads, Dh] | (None, fsdp, tensor, None) |
| q_bias, k_bias, v_bias (qwen2) | [L, heads, Dh] | (None, tensor, None) |
| o | [L, H, Dh, D] | (None, tensor, None, fsdp) |
| gate, up | [L, D, F] | (None, fsdp, tensor) |
| down | [L, F, D] | (None, tensor, fsdp) |
| norms, q_norm, k_norm (qwen3) | [L, D] / [D] / [L, Dh] | replicated |

A param without a rule is an error, not silently replicated. A dimension that the mesh axis size
does not divide is replicated over that axis instead (for example k/v of a model with 2 KV heads
on tensor=4); `describe_param_sharding` reports it. The optimizer state follows the params
(`optax.tree_utils.tree_map_params`). Because jitted steps compute on global arrays, top-k and
random token selection (Clip-Cov, KL-Cov) pick the same tokens on every mesh as on one device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import functools
import math
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from entropix_rl.checks import check_bool, check_int
from entropix_rl.models import families, init_params
from entropix_rl.models.config import ModelConfig

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """`config.mesh`: device mesh sizes over (data, fsdp, tensor); one may be -1 ("the rest")."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    for name in AXES:
      if getattr(self, name) == 0 or getattr(self, name) < -1:
        raise ValueError(
            f"mesh.{name}={getattr(self, name)}; allowed: an int >= 1, or -1 (the "
            "rest of the devices)"
        )
    if [self.data, self.fsdp, self.tensor].count(-1) > 1:
      raise ValueError(
          f"mesh: at most one of data, fsdp, tensor may be -1; got data={self.data}, "
          f"fsdp={self.fsdp}, tensor={self.tensor}"
      )


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """`config.distributed`: `jax.distributed.initialize` arguments; unset ("", 0, -1) ones are
  discovered by JAX (TPU)."""

  enabled: bool = False
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1

  def __post_init__(self):
    check_bool("distributed.enabled", self.enabled)
    check_int("distributed.num_processes", self.num_processes, 0, " (0 = discovered)")
    check_int("distributed.process_id", self.process_id, -1, " (-1 = discovered)")


def distributed_kwargs(cfg: DistributedConfig) -> dict[str, Any]:
  """The `jax.distributed.initialize` arguments that the `distributed` section sets.

  Unset values are left out (so JAX discovers them, as on TPU VMs): `coordinator_address=""`,
  `num_processes <= 0` and `process_id < 0`.
  """
  values = {
      "coordinator_address": cfg.coordinator_address,
      "num_processes": cfg.num_processes,
      "process_id": cfg.process_id,
  }
  unset = {
      "coordinator_address": not cfg.coordinator_address,
      "num_processes": cfg.num_processes <= 0,
      "process_id": cfg.process_id < 0,
  }
  return {name: value for name, value in values.items() if not unset[name]}


def initialize_distributed(cfg: DistributedConfig) -> None:
  """Calls `jax.distributed.initialize` when `distributed.enabled` is true.

  On TPU VMs the coordinator and process ids are discovered automatically; elsewhere set
  `distributed.coordinator_address`, `num_processes` and `process_id` (`distributed_kwargs`).
  On CPU the processes' collectives run over TCP with gloo, JAX's default
  `jax_cpu_collectives_implementation`, so several processes on one machine need nothing else
  (docs/reliability.md, "Multi-process runs").
  """
  if not cfg.enabled:
    return
  kwargs = distributed_kwargs(cfg)
  logging.info("jax.distributed.initialize(%s)", kwargs)
  jax.distributed.initialize(**kwargs)


def mesh_shape(cfg: MeshConfig | Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves `{data, fsdp, tensor}` sizes; one of them may be -1 ("the rest of the devices")."""
  if isinstance(cfg, MeshConfig):
    cfg = dataclasses.asdict(cfg)
  unknown = sorted(set(cfg) - set(AXES))
  if unknown:
    raise ValueError(f"mesh: unknown axis {unknown}; allowed: {AXES}")
  sizes = {axis: int(cfg.get(axis, 1)) for axis in AXES}
  bad = [f"mesh.{a}={s}" for a, s in sizes.items() if s == 0 or s < -1]
  rest = [a for a, s in sizes.items() if s == -1]
  if bad or len(rest) > 1:
    raise ValueError(
        f"{', '.join(bad) or 'mesh'}: sizes must be positive, with at most one -1 "
        f"(the rest); got {sizes}"
    )
  known = math.prod(s for s in sizes.values() if s != -1)
  if rest:
    if num_devices % known:
      raise ValueError(f"mesh {sizes}: {num_devices} devices do not divide by {known}")
    sizes[rest[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(
        f"mesh {sizes} has {math.prod(sizes.values())} devices; " f"{num_devices} are available"
    )
  return sizes


def make_mesh(cfg: MeshConfig | Mapping[str, int], devices: list | None = None) -> Mesh:
  """A `Mesh` with axes (data, fsdp, tensor) over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(cfg, len(devices))
  return Mesh(np.asarray(devices).reshape([sizes[a] for a in AXES]), AXES)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """`spec` with every axis that does not divide its dimension replaced by None."""
  axes = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes.append(axis if axis is None or dim % mesh.shape[axis] == 0 else None)
  return P(*axes)


def param_specs(params: Any, mesh: Mesh) -> Any:
  """A PartitionSpec per param leaf, by its name in the tree (`families.PARTITION_RULES`).

  Raises:
    ValueError: naming the leaf's path and the known names, for a leaf without a rule.
  """
  rules = families.PARTITION_RULES

  def spec(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    if name not in rules:
      raise ValueError(
          f"param {jax.tree_util.keystr(path)} has no partition rule; params with "
          f"rules: {sorted(rules)} (a model family adds the rules of its params)"
      )
    return _fit(rules[name], leaf.shape, mesh)

  return jax.tree_util.tree_map_with_path(spec, params)


def param_shardings(model_cfg: ModelConfig, mesh: Mesh) -> Any:
  """`NamedSharding`s of the model's param tree (from its shapes; nothing is allocated)."""
  abstract = jax.eval_shape(functools.partial(init_params, model_cfg), jax.random.PRNGKey(0))
  return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(abstract, mesh))


def batch_shards(mesh: Mesh | None) -> int:
  """The data x fsdp shards that split a batch's rows (1 without a mesh)."""
  return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def kv_cache_specs(mesh: Mesh, num_kv_heads: int) -> dict[str, P]:
  """KV cache by batch and heads: k/v `[L, B, K, S, Dh]`, valid `[B, S]`, lengths and
  first_slot `[B]`; the write index replicated."""
  heads = "tensor" if num_kv_heads % mesh.shape["tensor"] == 0 else None
  kv = P(None, BATCH_AXES, heads, None, None)
  return {
      "k": kv,
      "v": kv,
      "valid": P(BATCH_AXES, None),
      "lengths": P(BATCH_AXES),
      "index": P(),
      "first_slot": P(BATCH_AXES),
  }


def state_shardings(state: Any, optimizer: optax.GradientTransformation, mesh: Mesh) -> Any:
  """Shardings of a `TrainState`: params and ref_params by the rules, the optimizer state
  following its params, everything else (step, rng, intervention states) replicated."""
  specs = param_specs(state.params, mesh)
  to_sharding = lambda spec: NamedSharding(mesh, spec)
  opt = optax.tree_utils.tree_map_params(
      optimizer,
      lambda _, spec: to_sharding(spec),
      state.opt_state,
      specs,
      transform_non_params=lambda _: replicated(mesh),
      is_leaf=lambda x: isinstance(x, P),
  )
  rep = lambda tree: jax.tree.map(lambda _: replicated(mesh), tree)
  return state.replace(
      step=replicated(mesh),
      params=jax.tree.map(to_sharding, specs),
      opt_state=opt,
      rng=replicated(mesh),
      interventions=rep(state.interventions),
      ref_params=None if state.ref_params is None else jax.tree.map(to_sharding, specs),
  )


class jit_on_mesh:
  """`jax.jit(fn, **kwargs)` whose calls and lowerings run under `jax.set_mesh(mesh)`, so that
  activation constraints (`models.partitioning`) resolve against `mesh`."""

  def __init__(self, fn, mesh: Mesh, **jit_kwargs):
    self.mesh = mesh
    self.jitted = jax.jit(fn, **jit_kwargs)

  def __call__(self, *args):
    with jax.set_mesh(self.mesh):
      return self.jitted(*args)

  def lower(self, *args):
    with jax.set_mesh(self.mesh):
      return self.jitted.lower(*args)

  def _cache_size(self) -> int:
    return self.jitted._cache_size()


def jit_train_step(step, mesh: Mesh | None, state_sharding: Any = None):
  """`jax.jit` of a training step `(state, batch) -> (state, metrics)` that donates the state.

  On a mesh the state keeps `state_sharding` (`state_shardings`), the batch's rows split over
  data x fsdp and the metrics come back replicated.
  """
  if mesh is None:
    return jax.jit(step, donate_argnums=0)
  if state_sharding is None:
    raise ValueError("a training step on a mesh needs state_sharding= (sharding.state_shardings)")
  return jit_on_mesh(
      step,
      mesh,
      donate_argnums=0,
      in_shardings=(state_sharding, batch_sharding(mesh)),
      out_shardings=(state_sharding, replicated(mesh)),
  )


def check_batch_divisible(rows: int, mesh: Mesh, what: str) -> None:
  """Raises ValueError naming `what` unless `rows` split evenly over the mesh's data shards."""
  shards = batch_shards(mesh)
  if rows % shards:
    raise ValueError(f"{what}={rows} rows must divide by mesh data x fsdp = {shards}")


def describe_param_sharding(params: Any) -> list[tuple[str, tuple[int, ...], str, int]]:
  """(path, shape, spec, bytes per device) for every param leaf of a placed tree."""
  rows = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    shard = leaf.addressable_shards[0].data
    rows.append(
        (
            jax.tree_util.keystr(path),
            tuple(leaf.shape),
            str(leaf.sharding.spec),
            int(shard.size * shard.dtype.itemsize),
        )
    )
  return rows


def to_global(tree: Any, mesh: Mesh) -> Any:
  """Host-local rows (numpy) -> global arrays sharded over data x fsdp.

  On one process this places the rows on the mesh; on many, each host passes its own rows and
  the global batch is their concatenation in process order.
  """
  rows = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(rows, np.asarray(x)), tree)


def to_host_local(tree: Any, mesh: Mesh) -> Any:
  """Global row-sharded arrays -> this host's rows as numpy (the inverse of `to_global`)."""
  local = multihost_utils.global_array_to_host_local_array(tree, mesh, P(BATCH_AXES))
  return jax.tree.map(np.asarray, local)


def gather_host_rows(tree: Any) -> Any:
  """Every host's rows of each host-local array in `tree`, concatenated in process order.

  Leaves must have the same shape on every host; scalars count as one row. Values travel as
  the bit patterns of float64 (two uint32 words each), so they arrive exactly, although JAX
  arrays are 32-bit by default. Every leaf comes back as a float64 numpy array (on one process
  too, so one and several processes compute their metrics from the same values).
  """

  def gather(x):
    x = np.ascontiguousarray(np.atleast_1d(np.asarray(x, np.float64)))
    if jax.process_count() == 1:
      return x
    words = multihost_utils.process_allgather(x.view(np.uint32), tiled=True)
    return np.ascontiguousarray(words).view(np.float64)

  return jax.tree.map(gather, tree)


def split_rows(tree: Any, pieces: int, shards: int) -> Any:
  """`[N, ...]` leaves → `[pieces, N / pieces, ...]`, piece j taking slice j of every shard.

  The N rows are laid out as `shards` contiguous blocks (one per data shard); piece j holds
  rows `[j·r, (j+1)·r)` of each block, with `r = N / (shards · pieces)`. So a micro-batch or a
  no-grad chunk never moves rows between devices.
  """

  def split(x):
    n = x.shape[0]
    r = n // (shards * pieces)
    x = x.reshape((shards, pieces, r) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((pieces, shards * r) + x.shape[3:])

  return jax.tree.map(split, tree)


def merge_rows(tree: Any, shards: int) -> Any:
  """The inverse of `split_rows`: `[pieces, M, ...]` → `[pieces · M, ...]`."""

  def merge(x):
    pieces, m = x.shape[:2]
    x = x.reshape((pieces, shards, m // shards) + x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape((pieces * m,) + x.shape[3:])

  return jax.tree.map(merge, tree)


def constrain_rows(tree: Any, mesh: Mesh | None, axis: int = 0) -> Any:
  """Rows (axis `axis`) over data x fsdp on `mesh`; a no-op without a mesh."""
  if mesh is None:
    return tree

  def constrain(x):
    spec = P(*([None] * axis), BATCH_AXES, *([None] * (x.ndim - axis - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  return jax.tree.map(constrain, tree)


def map_row_chunks(
    fn: Callable[[Any], Any], tree: Any, *, chunk_rows: int, mesh: Mesh | None = None
) -> Any:
  """`fn` over chunks of `chunk_rows` rows per data shard, reassembled in row order (`lax.map`),
  so the peak memory of a no-grad pass follows the chunk, not the batch.

  Args:
    fn: maps a pytree of `[M, ...]` row arrays to a pytree of `[M, ...]` arrays.
    tree: `[N, ...]` row arrays, N a multiple of `batch_shards(mesh) · chunk_rows`;
      `chunk_rows = 0` processes all rows at once.
    mesh: the mesh, to keep each chunk's rows on their devices.
  """
  shards = batch_shards(mesh)
  n = jax.tree.leaves(tree)[0].shape[0]
  pieces = 1 if not chunk_rows else n // (shards * chunk_rows)
  if pieces <= 1:
    return fn(tree)
  chunks = constrain_rows(split_rows(tree, pieces, shards), mesh, axis=1)
  out = jax.lax.map(lambda rows: fn(constrain_rows(rows, mesh)), chunks)
  return constrain_rows(merge_rows(out, shards), mesh)
