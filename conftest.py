"""Puts the repository root on sys.path so tests can import `configs` and `experiments`, and
gives the test session one JAX persistent compilation cache (a fresh temporary directory,
inherited by the tests' subprocesses), so that programs compiled again by later tests (every
small run builds its own jitted steps) are read back instead of recompiled."""

import os
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # set before any test imports jax
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="entropix_rl_jax_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_sessionfinish(session, exitstatus):
  """Removes the session's compilation cache (not one the caller set)."""
  del session, exitstatus
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
  if os.path.basename(cache).startswith("entropix_rl_jax_cache_"):
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
