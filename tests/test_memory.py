"""Tests of the per-device memory model (entropix_rl/memory.py)."""

import pytest

from entropix_rl import memory
from entropix_rl.models.config import tiny_config

_KW = dict(
    train_rows_per_device=2,
    prompt_len=256,
    response_len=768,
    rollouts=128,
    decode_rows=64,
    group_size=8,
)


def _estimate(cfg, **mesh):
  return memory.estimate_memory(cfg, mesh_shape=mesh, **_KW)


def test_param_bytes_divide_by_fsdp_times_tensor():
  cfg = memory.qwen25_config("7B")
  est = _estimate(cfg, data=2, fsdp=4, tensor=2)
  assert est.params == cfg.num_params() * 2 // 8
  assert est.grads == est.params + cfg.num_params() * 4 // 8  # + float32 accumulator
  assert est.optimizer == cfg.num_params() * 2 * 2 // 8  # two moments in the param dtype
  assert est.reference == 0
  unsplit = memory.estimate_memory(
      cfg, mesh_shape={"data": 2, "fsdp": 4, "tensor": 2}, **dict(_KW, micro_batching=False)
  )
  assert unsplit.grads == est.params


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
  assert est.kv_cache == per_token * (64 // 4) * 1024 // 4
  # tensor=8 does not divide 4 KV heads: heads are replicated, only the batch shards.
  est8 = _estimate(cfg, data=2, fsdp=2, tensor=8)
  assert est8.kv_cache == per_token * (64 // 4) * 1024
  assert memory.kv_head_shards(cfg, 8) == 1 and memory.kv_head_shards(cfg, 2) == 2


def test_total_is_peak_of_phases():
  est = _estimate(tiny_config(), data=1, fsdp=1, tensor=1)
  resident = est.params + est.optimizer + est.reference
  assert est.total == max(
      resident + est.grads + est.rollout_batch + max(est.activations, est.no_grad_pass),
      resident + est.kv_cache + est.prefill,
      resident + est.kv_cache + est.decode,
  )
  assert est.fits(10**12) and not est.fits(1)


def test_activations_grow_linearly_with_the_micro_batch():
  """Blockwise attention: no term quadratic in the sequence length."""
  cfg = memory.qwen25_config("7B")
  mesh = dict(data=1, fsdp=4, tensor=4)
  one = memory.estimate_memory(cfg, mesh_shape=mesh, **dict(_KW, train_rows_per_device=1))
  two = memory.estimate_memory(cfg, mesh_shape=mesh, **dict(_KW, train_rows_per_device=2))
  longer = memory.estimate_memory(
      cfg, mesh_shape=mesh, **dict(_KW, train_rows_per_device=1, response_len=2 * 768 + 256)
  )
  assert two.activations < 2 * one.activations
  assert longer.activations < 2 * one.activations


@pytest.mark.parametrize("size,expected,tol", [("7B", 6.5e9, 0.02), ("32B", 31e9, 0.03)])
def test_qwen25_non_embedding_params(size, expected, tol):
  n = memory.qwen25_config(size).num_params(include_embeddings=False)
  assert abs(n - expected) / expected < tol


def test_qwen25_sizes_and_unknown():
  assert memory.qwen25_config("0.5B").tie_embeddings
  assert memory.qwen25_config("1.5B").param_dtype == "bfloat16"
  assert memory.QWEN25_SIZES == ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")
  assert abs(memory.qwen25_config("72B").num_params(include_embeddings=False) - 70.2e9) < 1e9
  with pytest.raises(ValueError, match="size"):
    memory.qwen25_config("4B")


@pytest.mark.parametrize(
    "mesh,field",
    [
        ({"data": 0, "fsdp": 1, "tensor": 1}, "data"),
        ({"data": 1, "fsdp": -1, "tensor": 1}, "fsdp"),
        ({"data": 1, "fsdp": 1, "tensor": 0}, "tensor"),
        ({"data": 1, "fsdp": 1, "expert": 2}, "expert"),
    ],
)
def test_bad_mesh_raises(mesh, field):
  with pytest.raises(ValueError, match=field):
    memory.estimate_memory(tiny_config(), mesh_shape=mesh, **_KW)


def test_bad_sizes_raise():
  with pytest.raises(ValueError, match="decode_rows"):
    memory.estimate_memory(tiny_config(), mesh_shape={"data": 1}, **dict(_KW, decode_rows=0))


def test_device_hbm_bytes():
  assert memory.device_hbm_bytes("v5p") == 95 * 2**30
  assert memory.device_hbm_bytes("v6e") == 32 * 2**30
  assert memory.device_hbm_bytes("h100") == 80 * 2**30
  with pytest.raises(ValueError, match="kind"):
    memory.device_hbm_bytes("v4")


def test_max_rollout_batch_fits():
  cfg = memory.qwen25_config("7B")
  mesh = {"data": 1, "fsdp": 4, "tensor": 4}
  hbm = memory.device_hbm_bytes("v5p")
  est = memory.estimate_memory(cfg, mesh_shape=mesh, **_KW)
  b = memory.max_rollout_batch(cfg, est, mesh_shape=mesh, rollout_len=10240, hbm_bytes=hbm)
  assert b > 0 and b % 4 == 0
  long = dict(_KW, prompt_len=2048, response_len=8192)
  fits = memory.estimate_memory(cfg, mesh_shape=mesh, **dict(long, decode_rows=b))
  assert fits.resident + fits.kv_cache <= 0.9 * hbm
  over = memory.estimate_memory(cfg, mesh_shape=mesh, **dict(long, decode_rows=b + 4))
  assert over.resident + over.kv_cache > 0.9 * hbm
