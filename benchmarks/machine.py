"""The machine's own limits, measured in the benchmark's run, and the facts every figure states.

* `cpu_facts()`: the CPU model and whether AVX-512 and AMX are present (from /proc/cpuinfo),
  the backend and the device count. Every benchmark line carries them, because machines of
  one kind have different CPUs and a ratio that rests on one kernel's speed moves with them.
* `matmul_peak_flops(dtype)`: FLOP/s of a large jitted `jnp.dot` (median of 5), the ceiling an
  update's matmuls can reach on this machine at that dtype.
* `median_seconds(fn, *args)`: the timing every figure here uses.
* `memory_bandwidth()`: bytes/s of a jitted reduction over a 1 GiB array (read once, median
  of 5), the ceiling a decode step, which reads every param and the KV cache, can reach.
"""

from __future__ import annotations

import functools
import platform
import statistics
import time

import jax
import jax.numpy as jnp


def _cpu_info() -> tuple[str, set[str]]:
  model, flags = platform.processor() or "unknown", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
  except OSError:
    pass
  return model, flags


@functools.cache
def cpu_facts() -> dict:
  """`cpu`, `avx512`, `amx`, `backend` and `devices` for one JSON line."""
  model, flags = _cpu_info()
  return dict(
      cpu=model,
      avx512="avx512f" in flags,
      amx="amx_tile" in flags,
      backend=jax.default_backend(),
      devices=jax.device_count(),
  )


def median_seconds(fn, *args, repeats: int = 5) -> float:
  """Median wall time of `fn(*args)` over `repeats` calls after a warm-up call (which
  compiles), each waited for (`jax.block_until_ready`)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak_flops(dtype=jnp.float32, size: int = 2048) -> float:
  """FLOP/s of one `[size, size] @ [size, size]` product at `dtype` (2·size³ FLOPs)."""
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  seconds = median_seconds(jax.jit(jnp.dot), a, b)
  return 2 * size**3 / seconds


def memory_bandwidth(gib: float = 1.0) -> float:
  """Bytes/s of summing a float32 array of `gib` GiB (each byte read once)."""
  x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
  seconds = median_seconds(jax.jit(jnp.sum), x)
  return x.nbytes / seconds
