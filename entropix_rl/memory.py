"""Per-device memory of RL training on a (data, fsdp, tensor) mesh, from the model config.

A first-order budget to choose a slice and a mesh before launching, not a replacement for
`jax.jit(...).lower(...).compile().memory_analysis()`. Every number is derived from a
`ModelConfig` and the batch shapes; nothing is hand-entered. Components, in bytes per device:

* **params**: `num_params · itemsize(param_dtype) / (fsdp · tensor)`. `entropix_rl.sharding`
  shards every matrix over fsdp (hidden dim / embedding rows) and tensor (heads, MLP hidden
  units); the few replicated leaves (norms, biases or k/v whose head count the tensor axis
  does not divide) are ignored, so this is a slight underestimate for those.
* **grads**: same size and sharding as the params (gradients are in the param dtype).
* **optimizer**: AdamW's two moments (`mu`, `nu`), each `optimizer_state_bytes` bytes per
  param, default 4 (float32), sharded like the params: `2 · 4 · num_params / (fsdp · tensor)`.
  Note that `optax.adamw` without `mu_dtype` keeps both moments in the *param* dtype, so with
  bfloat16 params the default here is an upper bound of what `train/optim.py` allocates.
* **reference**: a frozen copy of the params for a KL term (0 unless `with_reference`).
* **activations** of one training micro-batch with per-layer rematerialisation
  (`jax.checkpoint` around each scanned layer): the saved layer inputs
  `L · tokens · D · itemsize(compute)`, plus one layer's working set recomputed in the
  backward pass, plus the chunked token-stats (log-prob / entropy) working set. `tokens` is
  the micro-batch tokens one data shard processes (`train_tokens_per_device`; tensor-parallel
  devices of one shard see the same tokens). One layer's working set counts its forward
  intermediates once more for their cotangents (factor 2): per token the normed input `D`,
  q/attention output `2 · H_t · Dh`, k/v `2 · K_t · Dh`, SwiGLU gate/up/product `3 · F_t`
  in the compute dtype, and the attention scores (float32) and probabilities (compute dtype)
  `H_t · S` per token, where `S = train_seq_len` (the decoder's attention is dense, so this
  term is quadratic in the sequence length). `H_t = H / tensor`, `F_t = F / tensor`,
  `K_t` as in the KV cache rule below. Token stats (`entropix_rl.token_stats`): three float32
  `[token_chunk, vocab_chunk]` blocks, the float32 `[D, vocab_chunk]` unembedding-gradient
  accumulator and the float32 `[tokens, D]` hidden-state gradient.
* **kv_cache** for rollouts: `kv_cache_bytes_per_token · rollout_batch · rollout_len /
  shards`. The cache `[L, B, S, K, Dh]` is sharded by batch over `data · fsdp` (the
  per-device batch is `ceil(rollout_batch / (data · fsdp))`) and by KV heads over `tensor`
  **only when `tensor` divides `num_kv_heads`**; otherwise the heads are replicated across
  the tensor axis (the rule of `sharding.kv_cache_specs`). So KV heads never shard beyond
  `num_kv_heads` ways: 7B (4 KV heads) on tensor=8 keeps a full copy of the heads per device.

Rollout and training do not hold their transient buffers at the same time, so

    total = params + optimizer + reference + max(grads + activations, kv_cache).

Sampler logits (`[batch, V]` per decode step) and XLA scratch space are not counted; keep a
margin (the scaling table calls a configuration a fit below 90% of HBM).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from entropix_rl.models.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")
GIB = 1024 ** 3

# Official Qwen2.5 base-model architectures (Hugging Face `config.json` of Qwen/Qwen2.5-*).
_QWEN25 = {
    "0.5B": dict(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                 intermediate_size=4864, tie_embeddings=True),
    "1.5B": dict(vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                 intermediate_size=8960, tie_embeddings=True),
    "7B": dict(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
               intermediate_size=18944, tie_embeddings=False),
    "32B": dict(vocab_size=152064, hidden_size=5120, num_layers=64, num_heads=40, num_kv_heads=8,
                intermediate_size=27648, tie_embeddings=False),
}

_HBM_GIB = {"v5p": 95, "v6e": 32, "h100": 80}


def qwen25_config(size: str) -> ModelConfig:
  """The Qwen2.5 architecture of `size` ("0.5B", "1.5B", "7B", "32B") with bfloat16 params.

  All sizes use head_dim 128, qkv bias, RoPE theta 1e6, RMSNorm eps 1e-6 and a 32k context.
  """
  if size not in _QWEN25:
    raise ValueError(f"size={size!r}; supported: {tuple(_QWEN25)}")
  return ModelConfig(head_dim=128, model_type="qwen2", rope_theta=1e6, rms_norm_eps=1e-6,
                     qkv_bias=True, max_position_embeddings=32768, param_dtype="bfloat16",
                     compute_dtype="bfloat16", **_QWEN25[size])


def device_hbm_bytes(kind: str) -> int:
  """HBM bytes of one device: "v5p" (95 GiB), "v6e" (32 GiB) or "h100" (80 GiB)."""
  if kind not in _HBM_GIB:
    raise ValueError(f"kind={kind!r}; supported: {tuple(_HBM_GIB)}")
  return _HBM_GIB[kind] * GIB


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Bytes per device of each component (see the module docstring for the formulas)."""

  params: int
  grads: int
  optimizer: int
  reference: int
  activations: int
  kv_cache: int

  @property
  def train_peak(self) -> int:
    """Bytes during the update: params, grads, optimizer state, reference, activations."""
    return self.params + self.grads + self.optimizer + self.reference + self.activations

  @property
  def rollout_peak(self) -> int:
    """Bytes during generation: params, optimizer state, reference and the KV cache."""
    return self.params + self.optimizer + self.reference + self.kv_cache

  @property
  def total(self) -> int:
    """Peak bytes per device: the larger of the training and rollout phases."""
    return max(self.train_peak, self.rollout_peak)

  def fits(self, hbm_bytes: int, headroom: float = 0.9) -> bool:
    """Whether `total` is at most `headroom` of `hbm_bytes`."""
    return self.total <= headroom * hbm_bytes

  def as_gib(self) -> dict[str, float]:
    """Every component and `total` in GiB."""
    out = {f.name: getattr(self, f.name) / GIB for f in dataclasses.fields(self)}
    out["total"] = self.total / GIB
    return out


def validate_mesh(mesh_shape: Mapping[str, int]) -> dict[str, int]:
  """`{data, fsdp, tensor}` sizes (missing axes are 1); raises ValueError naming the field."""
  unknown = sorted(set(mesh_shape) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh_shape: unknown axis {unknown}; allowed: {MESH_AXES}")
  sizes = {}
  for axis in MESH_AXES:
    size = mesh_shape.get(axis, 1)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
      raise ValueError(f"mesh_shape[{axis!r}]={size!r} must be a positive int")
    sizes[axis] = size
  return sizes


def kv_head_shards(model_cfg: ModelConfig, tensor: int) -> int:
  """How many ways the KV heads are split: `tensor` if it divides `num_kv_heads`, else 1."""
  return tensor if model_cfg.num_kv_heads % tensor == 0 else 1


def _positive(**values: int) -> None:
  for name, value in values.items():
    if value <= 0:
      raise ValueError(f"{name}={value} must be positive")


def estimate_memory(model_cfg: ModelConfig, *, mesh_shape: Mapping[str, int],
                    train_tokens_per_device: int, train_seq_len: int,
                    rollout_batch: int, rollout_len: int, token_chunk: int = 4096,
                    vocab_chunk: int = 32768, optimizer_state_bytes: int = 4,
                    with_reference: bool = False) -> MemoryEstimate:
  """Bytes per device of params, grads, optimizer, activations and rollout KV cache.

  Args:
    model_cfg: the policy architecture and dtypes.
    mesh_shape: `{"data", "fsdp", "tensor"}` positive sizes (missing axes are 1).
    train_tokens_per_device: tokens of one training micro-batch per data shard (padded
      sequences x length, e.g. verl's `ppo_max_token_len_per_gpu`).
    train_seq_len: padded length (prompt + response) of the training sequences; sets the
      attention-score term.
    rollout_batch: sequences decoded at the same time over the whole mesh.
    rollout_len: cache slots per sequence (max prompt + max response).
    token_chunk: `rl.token_chunk` of the token-stats loop (tokens per chunk).
    vocab_chunk: vocabulary block width of the token-stats loop.
    optimizer_state_bytes: bytes of each AdamW moment per param (4 = float32).
    with_reference: whether a frozen reference policy (for a KL term) is kept.

  Returns:
    A `MemoryEstimate` in bytes per device.
  """
  mesh = validate_mesh(mesh_shape)
  _positive(train_tokens_per_device=train_tokens_per_device, train_seq_len=train_seq_len,
            rollout_batch=rollout_batch, rollout_len=rollout_len, token_chunk=token_chunk,
            vocab_chunk=vocab_chunk, optimizer_state_bytes=optimizer_state_bytes)
  param_shards = mesh["fsdp"] * mesh["tensor"]
  batch_shards = mesh["data"] * mesh["fsdp"]
  n = model_cfg.num_params(include_embeddings=True)
  p_item = model_cfg.param_jnp_dtype.itemsize
  c_item = model_cfg.compute_jnp_dtype.itemsize

  params = n * p_item // param_shards
  grads = params
  optimizer = 2 * n * optimizer_state_bytes // param_shards
  reference = params if with_reference else 0

  d, dh = model_cfg.hidden_size, model_cfg.head_dim
  heads_t = math.ceil(model_cfg.num_heads / mesh["tensor"])
  kv_t = model_cfg.num_kv_heads // kv_head_shards(model_cfg, mesh["tensor"])
  ffn_t = math.ceil(model_cfg.intermediate_size / mesh["tensor"])
  tokens = train_tokens_per_device
  layer_inputs = model_cfg.num_layers * tokens * d * c_item
  per_token = (d + 2 * heads_t * dh + 2 * kv_t * dh + 3 * ffn_t) * c_item
  per_token += heads_t * min(train_seq_len, tokens) * (4 + c_item)
  one_layer = 2 * tokens * per_token
  vocab_block = min(vocab_chunk, model_cfg.vocab_size)
  stats = (3 * min(token_chunk, tokens) * vocab_block * 4 + d * vocab_block * 4
           + tokens * d * 4)
  activations = layer_inputs + one_layer + stats

  seqs = math.ceil(rollout_batch / batch_shards)
  kv_cache = (model_cfg.kv_cache_bytes_per_token() * seqs * rollout_len
              // kv_head_shards(model_cfg, mesh["tensor"]))
  return MemoryEstimate(params=params, grads=grads, optimizer=optimizer, reference=reference,
                        activations=activations, kv_cache=kv_cache)


def max_rollout_batch(model_cfg: ModelConfig, estimate: MemoryEstimate, *,
                      mesh_shape: Mapping[str, int], rollout_len: int, hbm_bytes: int,
                      headroom: float = 0.9) -> int:
  """Largest mesh-wide rollout batch whose KV cache fits next to the resident state.

  Resident state = params + optimizer + reference of `estimate`; the result is a multiple of
  `data · fsdp` (0 when nothing fits).
  """
  mesh = validate_mesh(mesh_shape)
  free = headroom * hbm_bytes - (estimate.params + estimate.optimizer + estimate.reference)
  per_seq = (model_cfg.kv_cache_bytes_per_token() * rollout_len
             / kv_head_shards(model_cfg, mesh["tensor"]))
  return max(0, int(free // per_seq)) * mesh["data"] * mesh["fsdp"]
