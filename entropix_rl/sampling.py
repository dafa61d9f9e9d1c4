"""Jitted KV-cache generation returning tokens, log-probs and entropies.

`sample` prefills left-padded prompts into a preallocated KV cache sized prompt + max_new_tokens
(in the model's compute dtype; `ModelConfig.kv_cache_bytes_per_token()` bytes per token and row),
then decodes one token per step inside a `lax.while_loop` that stops as soon as every row has
emitted a stop token. Prompt widths are bucketed to powers of two (at least
`SamplerConfig.min_prompt_bucket`), so repeated calls with similar prompts reuse one compiled
program.

Which distribution `logp` and `entropy` describe: the *tempered* distribution
softmax(logits / temperature) over the full vocabulary, before top-p and top-k truncation. This
is the distribution the policy-gradient losses differentiate (`token_stats` at the same
temperature), so a rollout's `logp` equals the old-policy log-prob of the update step. The token
itself is drawn from that distribution restricted to the top-k / top-p set and renormalised.
With `greedy=True` the argmax token is taken and `logp`/`entropy` still describe the tempered
distribution.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh, NamedSharding

from entropix_rl import sharding
from entropix_rl.models import decoder
from entropix_rl.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How to sample completions.

  Attributes:
    temperature: softmax temperature, > 0.
    top_p: nucleus mass in (0, 1]; 1 disables it.
    top_k: keep the k most likely tokens; 0 disables it.
    max_new_tokens: generation budget per completion.
    stop_ids: token ids that end a completion (the stop token is part of the completion).
    num_samples: completions per prompt (a GRPO group); rows of one prompt are adjacent.
    greedy: take the argmax instead of sampling.
    pad_id: id written after a completion ends and in prompt padding.
    min_prompt_bucket: smallest prompt width; widths are rounded up to a power of two.
  """

  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  max_new_tokens: int = 256
  stop_ids: tuple[int, ...] = ()
  num_samples: int = 1
  greedy: bool = False
  pad_id: int = 0
  min_prompt_bucket: int = 16

  def __post_init__(self):
    object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))
    checks = [
        ("temperature", self.temperature > 0, "must be > 0"),
        ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
        ("top_k", self.top_k >= 0, "must be >= 0 (0 disables top-k)"),
        ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
        ("num_samples", self.num_samples >= 1, "must be >= 1"),
        ("min_prompt_bucket", self.min_prompt_bucket >= 1, "must be >= 1"),
    ]
    for name, ok, rule in checks:
      if not ok:
        raise ValueError(f"sampler.{name}={getattr(self, name)!r} {rule}")

  @classmethod
  def from_config_dict(cls, cfg: Mapping[str, Any]) -> "SamplerConfig":
    """Builds from a `config.sampler` ConfigDict; unknown fields are an error naming them."""
    values = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    allowed = tuple(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(values) - set(allowed))
    if unknown:
      raise ValueError(f"sampler: unknown field(s) {unknown}; allowed: {allowed}")
    if "stop_ids" in values:
      values["stop_ids"] = tuple(values["stop_ids"])
    return cls(**values)


@flax.struct.dataclass
class Rollout:
  """Completions for a batch of prompts. N = prompts x num_samples rows, C = max_new_tokens.

  Attributes:
    prompt_tokens: `[N, P]` int32, left-padded (P is the bucketed prompt width).
    prompt_lengths: `[N]` int32 real prompt tokens per row.
    completion_tokens: `[N, C]` int32, `pad_id` after the first stop token.
    completion_mask: `[N, C]` bool, True up to and including the first stop token.
    logp: `[N, C]` float32 log-prob of each sampled token under softmax(logits / T) (0 where
      masked out).
    entropy: `[N, C]` float32 entropy (nats) of softmax(logits / T) at each step (0 where
      masked out).
    lengths: `[N]` int32 completion tokens (stop token included).
    truncated: `[N]` bool, True where no stop token came within max_new_tokens.
    group_ids: `[N]` int32 index of each row's prompt.
  """

  prompt_tokens: jax.Array
  prompt_lengths: jax.Array
  completion_tokens: jax.Array
  completion_mask: jax.Array
  logp: jax.Array
  entropy: jax.Array
  lengths: jax.Array
  truncated: jax.Array
  group_ids: jax.Array


def prompt_bucket(width: int, minimum: int) -> int:
  """The smallest power of two >= max(width, minimum)."""
  size = max(int(width), int(minimum), 1)
  return 1 << (size - 1).bit_length()


def _filtered_logits(scaled: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """`[B, V]` tempered logits with tokens outside top-k / top-p set to -inf."""
  neg_inf = jnp.finfo(scaled.dtype).min
  if top_k > 0 and top_k < scaled.shape[-1]:
    kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
    scaled = jnp.where(scaled < kth, neg_inf, scaled)
  if top_p < 1.0:
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p  # always keeps the most likely token
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    scaled = jnp.where(scaled < threshold, neg_inf, scaled)
  return scaled


def _choose(logits: jax.Array, rng: jax.Array, cfg: SamplerConfig
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Picks tokens from `[B, V]` float32 logits: (tokens, logp, entropy), all `[B]`."""
  scaled = logits / cfg.temperature
  log_probs = jax.nn.log_softmax(scaled, axis=-1)
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  if cfg.greedy:
    tokens = jnp.argmax(logits, axis=-1)
  else:
    tokens = jax.random.categorical(rng, _filtered_logits(scaled, cfg.top_k, cfg.top_p), axis=-1)
  tokens = tokens.astype(jnp.int32)
  logp = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
  return tokens, logp, entropy


def _constrain_cache(cache: decoder.KVCache, mesh: Mesh | None, num_kv_heads: int
                     ) -> decoder.KVCache:
  if mesh is None:
    return cache
  specs = sharding.kv_cache_specs(mesh, num_kv_heads)
  return decoder.KVCache(**{name: jax.lax.with_sharding_constraint(
      getattr(cache, name), NamedSharding(mesh, spec)) for name, spec in specs.items()})


def _generate(model_cfg: ModelConfig, cfg: SamplerConfig, mesh: Mesh | None, params: Any,
              prompt_tokens: jax.Array, prompt_mask: jax.Array, rng: jax.Array
              ) -> tuple[jax.Array, ...]:
  """Prefill + decode loop. Returns (tokens, mask, logp, entropy) `[N, C]` and truncated `[N]`."""
  n, width = prompt_tokens.shape
  steps = cfg.max_new_tokens
  cache = _constrain_cache(decoder.init_cache(model_cfg, n, width + steps), mesh,
                           model_cfg.num_kv_heads)
  hidden, cache = decoder.forward_hidden(model_cfg, params, prompt_tokens, cache=cache,
                                         mask=prompt_mask)
  logits = decoder.logits_from_hidden(model_cfg, params, hidden[:, -1])
  stop_ids = jnp.asarray(cfg.stop_ids if cfg.stop_ids else (-1,), jnp.int32)

  def emit(carry, logits):
    t, cache, done, rng, out = carry
    rng, key = jax.random.split(rng)
    tok, logp, ent = _choose(logits, key, cfg)
    live = ~done
    tok = jnp.where(live, tok, cfg.pad_id)
    out = tuple(jax.lax.dynamic_update_slice_in_dim(buf, val[:, None], t, axis=1)
                for buf, val in zip(out, (tok, live, jnp.where(live, logp, 0.0),
                                          jnp.where(live, ent, 0.0))))
    done = done | jnp.isin(tok, stop_ids)
    return (t + 1, cache, done, rng, out), tok

  def cond(carry):
    t, _, done, _, _ = carry
    return (t < steps) & ~jnp.all(done)

  def body(carry):
    t, cache, done, rng, out = carry
    tok = out[0][:, t - 1]
    hidden, cache = decoder.forward_hidden(model_cfg, params, tok[:, None], cache=cache)
    cache = _constrain_cache(cache, mesh, model_cfg.num_kv_heads)
    logits = decoder.logits_from_hidden(model_cfg, params, hidden[:, 0])
    carry, _ = emit((t, cache, done, rng, out), logits)
    return carry

  out = (jnp.full((n, steps), cfg.pad_id, jnp.int32), jnp.zeros((n, steps), bool),
         jnp.zeros((n, steps), jnp.float32), jnp.zeros((n, steps), jnp.float32))
  carry, _ = emit((jnp.int32(0), cache, jnp.zeros((n,), bool), rng, out), logits)
  _, _, done, _, out = jax.lax.while_loop(cond, body, carry)
  return (*out, ~done)


@functools.lru_cache(maxsize=64)
def compiled_generate(model_cfg: ModelConfig, cfg: SamplerConfig, mesh: Mesh | None = None):
  """The jitted generation loop; on a mesh with explicit in/out shardings (rows over data x fsdp,
  params by `sharding.param_shardings`, KV cache by batch and heads)."""
  fn = functools.partial(_generate, model_cfg, cfg, mesh)
  if mesh is None:
    return jax.jit(fn)
  rows = sharding.batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(sharding.param_shardings(model_cfg, mesh), rows, rows,
                                   sharding.replicated(mesh)),
                 out_shardings=(rows,) * 5)


def sample(model_cfg: ModelConfig, params: Any, prompt_tokens: np.ndarray | jax.Array,
           prompt_lengths: np.ndarray | jax.Array | Sequence[int], rng: jax.Array,
           sampler_cfg: SamplerConfig, *, mesh: Mesh | None = None) -> Rollout:
  """Samples `sampler_cfg.num_samples` completions for each left-padded prompt.

  Args:
    model_cfg: the policy's config.
    params: its param tree.
    prompt_tokens: `[B, P]` int token ids, left-padded (real tokens at the right end).
    prompt_lengths: `[B]` real tokens per prompt, in [1, P].
    rng: PRNG key.
    sampler_cfg: see `SamplerConfig`.
    mesh: optional device mesh; rows (B x num_samples) must divide by its data x fsdp size.

  Returns:
    A `Rollout` with N = B x num_samples rows; row `i` belongs to prompt `i // num_samples`.
    On a mesh, `prompt_tokens` are this host's prompts and the rollout holds this host's rows
    (numpy); all hosts call `sample` together.

  Raises:
    ValueError: for a prompt length outside [1, P], or prompt + generation longer than the
      model's `max_position_embeddings`.
  """
  tokens = np.asarray(prompt_tokens, np.int32)
  lengths = np.asarray(prompt_lengths, np.int32)
  if tokens.ndim != 2 or lengths.shape != (tokens.shape[0],):
    raise ValueError(f"prompt_tokens must be [B, P] and prompt_lengths [B]; got "
                     f"{tokens.shape} and {lengths.shape}")
  width = tokens.shape[1]
  if lengths.size and (lengths.min() < 1 or lengths.max() > width):
    raise ValueError(f"prompt_lengths must be in [1, {width}]; got min {lengths.min()}, "
                     f"max {lengths.max()}")
  bucket = prompt_bucket(int(lengths.max()) if lengths.size else 1, sampler_cfg.min_prompt_bucket)
  if bucket + sampler_cfg.max_new_tokens > model_cfg.max_position_embeddings:
    bucket = max(width, int(lengths.max()) if lengths.size else 1)  # the caller's width fits
  total = bucket + sampler_cfg.max_new_tokens
  if total > model_cfg.max_position_embeddings:
    raise ValueError(f"prompt bucket {bucket} + sampler.max_new_tokens "
                     f"{sampler_cfg.max_new_tokens} = {total} exceeds the model's "
                     f"max_position_embeddings={model_cfg.max_position_embeddings}")
  keep = min(width, bucket)
  padded = np.full((tokens.shape[0], bucket), sampler_cfg.pad_id, np.int32)
  padded[:, bucket - keep:] = tokens[:, width - keep:]
  mask = np.arange(bucket)[None, :] >= (bucket - lengths)[:, None]
  padded = np.where(mask, padded, sampler_cfg.pad_id)
  repeat = sampler_cfg.num_samples
  padded, mask, lengths = (np.repeat(x, repeat, axis=0) for x in (padded, mask, lengths))
  if mesh is not None:
    sharding.check_batch_divisible(padded.shape[0], mesh, "prompts x sampler.num_samples")
  inputs = (padded, mask) if mesh is None else sharding.to_global((padded, mask), mesh)
  outputs = compiled_generate(model_cfg, sampler_cfg, mesh)(params, *inputs, rng)
  if mesh is not None:
    outputs = sharding.to_host_local(outputs, mesh)
  comp, comp_mask, logp, entropy, truncated = outputs
  return Rollout(
      prompt_tokens=jnp.asarray(padded), prompt_lengths=jnp.asarray(lengths),
      completion_tokens=comp, completion_mask=comp_mask, logp=logp, entropy=entropy,
      lengths=comp_mask.sum(axis=1, dtype=jnp.int32), truncated=truncated,
      group_ids=jnp.repeat(jnp.arange(tokens.shape[0], dtype=jnp.int32), repeat))
