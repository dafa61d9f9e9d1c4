"""Per-device memory of RL training and sampling on a (data, fsdp, tensor) mesh.

A first-order budget from the model config and batch shapes, to choose a slice, a mesh and
the micro-batch knobs before compiling. The ground truth is the compiled program
(`benchmarks/memory.py` prints both and their ratio; docs/scaling.md has the figures). With
F = fsdp, T = tensor, S = data · fsdp (data shards), N params (`ModelConfig.num_params`, the
model family's count: q/k norms included), `p`/`c` the param/compute itemsizes, per device:

* **params** `N·p/(F·T)`; **optimizer** AdamW's two moments, in the param dtype as
  `optax.adamw` keeps them: `2·N·p/(F·T)`; **reference** a frozen param copy when a KL term
  needs one.
* **grads** `N·p/(F·T)`, plus a float32 accumulator `4·N/(F·T)` under micro-batching.
* **rollout_batch**: the step's rollout arrays, `rollouts/S` rows of tokens, masks, old
  log-probs and advantages.
* **activations** of one micro-batch of `tokens = train_rows_per_device · (prompt +
  response)` with per-layer rematerialisation: the saved layer inputs `L·tokens·D·c`, plus the
  larger of one layer's recomputed working set (forward and cotangents of the normed inputs,
  q/k/v, attention output, SwiGLU: `2·tokens·(4D + 2H_T·Dh + 2K_T·Dh + 3F_T)·c`, and the
  blockwise attention's float32 gradient accumulators `tokens·(H_T + 2K_T)·Dh·4`) and the
  token-stats working set (`[tokens, D]` float32 hidden gradient, three `[token_chunk,
  vocab_chunk]` float32 blocks, the `[D, vocab_chunk]` accumulator), plus the float32
  unembedding gradient `2·(D/F)·V·4`. Attention is blockwise (flash-style), so no term is
  quadratic in the sequence length.
* **kv_cache** of one sampling pass: `kv_cache_bytes_per_token · decode_rows/S · (prompt +
  response)`, divided by T only when T divides `num_kv_heads` (`sharding.kv_cache_specs`).
* **no_grad_pass**: one chunk of `rl.logprob_micro_batch_size` sequences of the no-grad
  passes (old log-probs, the planning pass): one layer's forward working set, its input and
  three token-stats blocks. It runs before the micro-batches, not beside them.
* **prefill**: the pass's prompts (`decode_rows / group_size`, each prefilled once), their
  stacked keys/values, one layer's forward working set, the cache before its rows are
  repeated per sample (`kv_cache / group_size`) and the last logits; **decode**: four
  float32 `[rows, V]` arrays of the sampling step.

    train_peak   = params + optimizer + reference + grads + rollout_batch
                   + max(activations, no_grad_pass)
    rollout_peak = params + optimizer + reference + kv_cache + max(prefill, decode)

XLA scratch beyond these is not counted; keep a margin (a configuration "fits" at 90% of HBM).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math

from entropix_rl.models.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")
GIB = 1024**3

# Official Qwen2.5 base-model architectures (Hugging Face `config.json` of Qwen/Qwen2.5-*).
_QWEN25 = {
    "0.5B": dict(
        vocab_size=151936,
        hidden_size=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        intermediate_size=4864,
        tie_embeddings=True,
    ),
    "1.5B": dict(
        vocab_size=151936,
        hidden_size=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        intermediate_size=8960,
        tie_embeddings=True,
    ),
    "3B": dict(
        vocab_size=151936,
        hidden_size=2048,
        num_layers=36,
        num_heads=16,
        num_kv_heads=2,
        intermediate_size=11008,
        tie_embeddings=True,
    ),
    "7B": dict(
        vocab_size=152064,
        hidden_size=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        intermediate_size=18944,
        tie_embeddings=False,
    ),
    "14B": dict(
        vocab_size=152064,
        hidden_size=5120,
        num_layers=48,
        num_heads=40,
        num_kv_heads=8,
        intermediate_size=13824,
        tie_embeddings=False,
    ),
    "32B": dict(
        vocab_size=152064,
        hidden_size=5120,
        num_layers=64,
        num_heads=40,
        num_kv_heads=8,
        intermediate_size=27648,
        tie_embeddings=False,
    ),
    "72B": dict(
        vocab_size=152064,
        hidden_size=8192,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        intermediate_size=29568,
        tie_embeddings=False,
    ),
}

HBM_GIB = {"v5p": 95, "v6e": 32, "h100": 80}


QWEN25_SIZES = tuple(_QWEN25)


def qwen25_config(size: str) -> ModelConfig:
  """The Qwen2.5 architecture of `size` ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B") with
  bfloat16 params.

  All sizes use head_dim 128, qkv bias, RoPE theta 1e6, RMSNorm eps 1e-6 and a 32k context.
  """
  if size not in _QWEN25:
    raise ValueError(f"size={size!r}; supported: {tuple(_QWEN25)}")
  return ModelConfig(
      head_dim=128,
      model_type="qwen2",
      rope_theta=1e6,
      rms_norm_eps=1e-6,
      qkv_bias=True,
      max_position_embeddings=32768,
      param_dtype="bfloat16",
      compute_dtype="bfloat16",
      **_QWEN25[size],
  )


def device_hbm_bytes(kind: str) -> int:
  """HBM bytes of one device: "v5p" (95 GiB), "v6e" (32 GiB) or "h100" (80 GiB)."""
  if kind not in HBM_GIB:
    raise ValueError(f"kind={kind!r}; supported: {tuple(HBM_GIB)}")
  return HBM_GIB[kind] * GIB


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Bytes per device of each component (see the module docstring for the formulas)."""

  params: int
  optimizer: int
  reference: int
  grads: int
  rollout_batch: int
  activations: int
  no_grad_pass: int
  kv_cache: int
  prefill: int
  decode: int

  @property
  def resident(self) -> int:
    """The train state, held in every phase."""
    return self.params + self.optimizer + self.reference

  @property
  def train_peak(self) -> int:
    """Bytes during the RL update (its micro-batch or its no-grad chunks, not both at once)."""
    return (
        self.resident + self.grads + self.rollout_batch + max(self.activations, self.no_grad_pass)
    )

  @property
  def sft_peak(self) -> int:
    """Bytes during an SFT step (the update without reference, rollout arrays, no-grad pass)."""
    return self.params + self.optimizer + self.grads + self.activations

  @property
  def prefill_peak(self) -> int:
    """Bytes while a sampling pass prefills its prompts into the KV cache."""
    return self.resident + self.kv_cache + self.prefill

  @property
  def decode_peak(self) -> int:
    """Bytes while a sampling pass decodes."""
    return self.resident + self.kv_cache + self.decode

  @property
  def rollout_peak(self) -> int:
    """Bytes during generation: the larger of prefill and decode."""
    return max(self.prefill_peak, self.decode_peak)

  @property
  def total(self) -> int:
    """Peak bytes per device: the larger of the training and rollout phases."""
    return max(self.train_peak, self.rollout_peak)

  def fits(self, hbm_bytes: int, headroom: float = 0.9) -> bool:
    """Whether `total` is at most `headroom` of `hbm_bytes`."""
    return self.total <= headroom * hbm_bytes

  def as_gib(self) -> dict[str, float]:
    """Every component and the phase peaks in GiB."""
    out = {f.name: getattr(self, f.name) / GIB for f in dataclasses.fields(self)}
    for name in ("train_peak", "sft_peak", "prefill_peak", "decode_peak", "rollout_peak", "total"):
      out[name] = getattr(self, name) / GIB
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


def estimate_memory(
    model_cfg: ModelConfig,
    *,
    mesh_shape: Mapping[str, int],
    train_rows_per_device: int,
    prompt_len: int,
    response_len: int,
    rollouts: int,
    decode_rows: int,
    group_size: int,
    logprob_rows_per_device: int | None = None,
    micro_batching: bool = True,
    token_chunk: int = 1024,
    vocab_chunk: int = 32768,
    optimizer_state_bytes: int | None = None,
    with_reference: bool = False,
) -> MemoryEstimate:
  """Bytes per device of the RL update and of sampling (module docstring).

  Args:
    model_cfg: the policy architecture and dtypes.
    mesh_shape: `{"data", "fsdp", "tensor"}` positive sizes (missing axes are 1).
    train_rows_per_device: sequences per data shard in one forward/backward
      (`rl.micro_batch_size`, or the mini-batch's share without micro-batching).
    prompt_len, response_len: padded prompt and response lengths.
    rollouts: responses per RL step (the rollout arrays the update holds).
    decode_rows: rows decoded in one sampling pass, over the whole mesh.
    group_size: samples per prompt (prefill runs once per prompt).
    logprob_rows_per_device: sequences per data shard in one chunk of the no-grad passes
      (`rl.logprob_micro_batch_size`; default `train_rows_per_device`).
    micro_batching: whether gradients accumulate over micro-batches (a float32 accumulator).
    token_chunk: `rl.token_chunk` of the token-stats loop (tokens per chunk).
    vocab_chunk: vocabulary block width of the token-stats loop.
    optimizer_state_bytes: bytes of each AdamW moment per param (default: the param dtype's,
      as `optax.adamw` keeps them).
    with_reference: whether a frozen reference policy (for a KL term) is kept.

  Returns:
    A `MemoryEstimate` in bytes per device.
  """
  mesh = validate_mesh(mesh_shape)
  _positive(
      train_rows_per_device=train_rows_per_device,
      prompt_len=prompt_len,
      response_len=response_len,
      rollouts=rollouts,
      decode_rows=decode_rows,
      group_size=group_size,
      token_chunk=token_chunk,
      vocab_chunk=vocab_chunk,
  )
  param_shards = mesh["fsdp"] * mesh["tensor"]
  shards = mesh["data"] * mesh["fsdp"]
  n = model_cfg.num_params(include_embeddings=True)
  p_item = model_cfg.param_jnp_dtype.itemsize
  c_item = model_cfg.compute_jnp_dtype.itemsize
  opt_item = p_item if optimizer_state_bytes is None else optimizer_state_bytes

  params = n * p_item // param_shards
  optimizer = 2 * n * opt_item // param_shards
  reference = params if with_reference else 0
  grads = params + (n * 4 // param_shards if micro_batching else 0)

  d, dh, v, layers = (
      model_cfg.hidden_size,
      model_cfg.head_dim,
      model_cfg.vocab_size,
      model_cfg.num_layers,
  )
  heads_t = math.ceil(model_cfg.num_heads / mesh["tensor"])
  kv_t = model_cfg.num_kv_heads // kv_head_shards(model_cfg, mesh["tensor"])
  ffn_t = math.ceil(model_cfg.intermediate_size / mesh["tensor"])
  seq = prompt_len + response_len
  tokens = train_rows_per_device * seq
  per_token = (4 * d + 2 * heads_t * dh + 2 * kv_t * dh + 3 * ffn_t) * c_item
  layer = 2 * tokens * per_token + tokens * (heads_t + 2 * kv_t) * dh * 4
  vocab_block = min(vocab_chunk, v)
  stats = tokens * d * 4 + 3 * min(token_chunk, tokens) * vocab_block * 4 + d * vocab_block * 4
  unembed_grad = 2 * (d // mesh["fsdp"]) * v * 4
  activations = layers * tokens * d * c_item + max(layer, stats) + unembed_grad
  lp_tokens = (logprob_rows_per_device or train_rows_per_device) * seq
  no_grad_pass = (
      lp_tokens * per_token
      + lp_tokens * d * c_item
      + 3 * min(token_chunk, lp_tokens) * vocab_block * 4
  )
  rollout_batch = math.ceil(rollouts / shards) * (seq * 5 + response_len * 24)

  rows = math.ceil(decode_rows / shards)
  kv_cache = (
      model_cfg.kv_cache_bytes_per_token() * rows * seq // kv_head_shards(model_cfg, mesh["tensor"])
  )
  prompts = math.ceil(rows / group_size)
  prompt_tokens = prompts * prompt_len
  prefill = (
      kv_cache // group_size
      + layers * prompt_tokens * 2 * kv_t * dh * c_item
      + 2 * prompt_tokens * per_token
      + prompts * v * 4
  )
  decode = 4 * rows * v * 4
  return MemoryEstimate(
      params=params,
      optimizer=optimizer,
      reference=reference,
      grads=grads,
      rollout_batch=rollout_batch,
      activations=activations,
      no_grad_pass=no_grad_pass,
      kv_cache=kv_cache,
      prefill=prefill,
      decode=decode,
  )


def max_rollout_batch(
    model_cfg: ModelConfig,
    estimate: MemoryEstimate,
    *,
    mesh_shape: Mapping[str, int],
    rollout_len: int,
    hbm_bytes: int,
    headroom: float = 0.9,
) -> int:
  """Largest mesh-wide rollout batch whose KV cache fits next to the resident state.

  Resident state = params + optimizer + reference of `estimate`; the result is a multiple of
  `data · fsdp` (0 when nothing fits).
  """
  mesh = validate_mesh(mesh_shape)
  free = headroom * hbm_bytes - (estimate.params + estimate.optimizer + estimate.reference)
  per_seq = (
      model_cfg.kv_cache_bytes_per_token() * rollout_len / kv_head_shards(model_cfg, mesh["tensor"])
  )
  return max(0, int(free // per_seq)) * mesh["data"] * mesh["fsdp"]


def estimate_for_experiment(
    model_cfg: ModelConfig, exp, mesh_shape: Mapping[str, int]
) -> MemoryEstimate:
  """`estimate_memory` with the shapes of a resolved experiment (`train.config.resolve`). A
  packed micro-batch of `rl.micro_batch_tokens` counts as the rows of that many tokens."""
  mesh = validate_mesh(mesh_shape)
  shards = mesh["data"] * mesh["fsdp"]
  rl = exp.config.rl
  width = exp.config.data.max_prompt_len + exp.sampler.max_new_tokens
  whole = rl.minibatch_size // shards

  def rows(tokens: int, size: int) -> int:
    return -(-tokens // width) if tokens else size or whole

  return estimate_memory(
      model_cfg,
      mesh_shape=mesh,
      train_rows_per_device=rows(rl.micro_batch_tokens, rl.micro_batch_size),
      prompt_len=exp.config.data.max_prompt_len,
      response_len=exp.sampler.max_new_tokens,
      rollouts=rl.batch_size,
      decode_rows=exp.sampler.max_decode_rows or rl.batch_size,
      logprob_rows_per_device=rows(rl.logprob_micro_batch_tokens, rl.logprob_micro_batch_size),
      group_size=rl.group_size,
      micro_batching=bool(rl.micro_batch_size or rl.micro_batch_tokens),
      token_chunk=rl.token_chunk,
      with_reference=rl.use_reference,
  )
