"""Tests of the per-device memory model (entropix_rl/memory.py)."""

import pytest

from entropix_rl import memory
from entropix_rl.models.config import tiny_config

_KW = dict(train_tokens_per_device=4096, train_seq_len=1024, rollout_batch=64, rollout_len=512)


def _estimate(cfg, **mesh):
  return memory.estimate_memory(cfg, mesh_shape=mesh, **_KW)


def test_param_bytes_divide_by_fsdp_times_tensor():
  cfg = memory.qwen25_config("7B")
  est = _estimate(cfg, data=2, fsdp=4, tensor=2)
  assert est.params == cfg.num_params() * 2 // 8
  assert est.grads == est.params
  assert est.optimizer == cfg.num_params() * 2 * 4 // 8  # two float32 moments
  assert est.reference == 0


def test_halving_fsdp_doubles_param_bytes():
  cfg = memory.qwen25_config("1.5B")  # num_params divisible by 8
  full = _estimate(cfg, data=1, fsdp=8, tensor=1)
  half = _estimate(cfg, data=2, fsdp=4, tensor=1)
  assert half.params == 2 * full.params
  assert half.optimizer == 2 * full.optimizer


def test_kv_cache_bytes():
  cfg = memory.qwen25_config("7B")  # 4 KV heads
  est = _estimate(cfg, data=2, fsdp=2, tensor=4)
  per_token = cfg.kv_cache_bytes_per_token()
  assert est.kv_cache == per_token * 64 * 512 // (2 * 2 * 4)
  # tensor=8 does not divide 4 KV heads: heads are replicated, only the batch shards.
  est8 = _estimate(cfg, data=2, fsdp=2, tensor=8)
  assert est8.kv_cache == per_token * 64 * 512 // (2 * 2)
  assert memory.kv_head_shards(cfg, 8) == 1 and memory.kv_head_shards(cfg, 2) == 2


def test_total_is_peak_of_phases():
  est = _estimate(tiny_config(), data=1, fsdp=1, tensor=1)
  assert est.total == max(est.params + est.grads + est.optimizer + est.activations,
                          est.params + est.optimizer + est.kv_cache)
  assert est.fits(10 ** 12) and not est.fits(1)


@pytest.mark.parametrize("size,expected,tol", [("7B", 6.5e9, 0.02), ("32B", 31e9, 0.03)])
def test_qwen25_non_embedding_params(size, expected, tol):
  n = memory.qwen25_config(size).num_params(include_embeddings=False)
  assert abs(n - expected) / expected < tol


def test_qwen25_small_sizes_and_unknown():
  assert memory.qwen25_config("0.5B").tie_embeddings
  assert memory.qwen25_config("1.5B").param_dtype == "bfloat16"
  with pytest.raises(ValueError, match="size"):
    memory.qwen25_config("3B")


@pytest.mark.parametrize("mesh,field", [
    ({"data": 0, "fsdp": 1, "tensor": 1}, "data"),
    ({"data": 1, "fsdp": -1, "tensor": 1}, "fsdp"),
    ({"data": 1, "fsdp": 1, "tensor": 0}, "tensor"),
    ({"data": 1, "fsdp": 1, "expert": 2}, "expert"),
])
def test_bad_mesh_raises(mesh, field):
  with pytest.raises(ValueError, match=field):
    memory.estimate_memory(tiny_config(), mesh_shape=mesh, **_KW)


def test_bad_sizes_raise():
  with pytest.raises(ValueError, match="rollout_len"):
    memory.estimate_memory(tiny_config(), mesh_shape={"data": 1},
                           **dict(_KW, rollout_len=0))


def test_device_hbm_bytes():
  assert memory.device_hbm_bytes("v5p") == 95 * 2 ** 30
  assert memory.device_hbm_bytes("v6e") == 32 * 2 ** 30
  assert memory.device_hbm_bytes("h100") == 80 * 2 ** 30
  with pytest.raises(ValueError, match="kind"):
    memory.device_hbm_bytes("v4")


def test_max_rollout_batch_fits():
  cfg = memory.qwen25_config("7B")
  mesh = {"data": 1, "fsdp": 4, "tensor": 4}
  hbm = memory.device_hbm_bytes("v5p")
  est = memory.estimate_memory(cfg, mesh_shape=mesh, **_KW)
  b = memory.max_rollout_batch(cfg, est, mesh_shape=mesh, rollout_len=10240, hbm_bytes=hbm)
  assert b > 0 and b % 4 == 0
  fits = memory.estimate_memory(cfg, mesh_shape=mesh, **dict(_KW, rollout_batch=b,
                                                              rollout_len=10240))
  assert fits.rollout_peak <= 0.9 * hbm
  over = memory.estimate_memory(cfg, mesh_shape=mesh, **dict(_KW, rollout_batch=b + 4,
                                                             rollout_len=10240))
  assert over.rollout_peak > 0.9 * hbm
