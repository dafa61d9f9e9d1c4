"""Jitted KV-cache generation returning tokens, log-probs and entropies.

How `sample` generates N = prompts x `num_samples` completions:

1. **A bounded decode batch.** At most `max_decode_rows` rows are decoded at once (all rows by
   default), so one batch's KV cache bounds the memory. The first `max_decode_rows //
   num_samples` prompts start it.
2. **Prefill, shared by a prompt's samples.** Each prompt is run once through the decoder
   (`models.prefill`, with `ModelConfig.attention_impl`) into a KV cache of
   prompt bucket + `max_new_tokens` slots, whose rows are then repeated `num_samples` times.
   Prompt widths are rounded up to powers of two (at least `min_prompt_bucket`), so similar
   prompts reuse one compiled program.
3. **Decode in segments, finished rows are refilled.** A jitted `lax.while_loop` decodes up
   to `decode_segment` tokens, stopping early when every row is done. Between segments, while
   (prompt, sample) pairs are still waiting (`refill`, rows beyond one batch), the rows that
   finished hand their cache rows to the next pairs in order: the pairs' prompts are prefilled
   (once per distinct prompt) and written into the freed rows just behind the cache's shared
   write head (its slots are a ring, `decoder.KVCache`), and the rows restart at step 0. The decode batch stays full until the queue
   is empty, as in continuous batching. With `refill=False` the rows run instead in passes of
   whole prompts, each decoded until its longest completion ends.
4. **Finished rows leave.** Once nothing is waiting, when the live rows fit a power of two at
   most half the current batch, they are gathered into that smaller batch (cache included),
   so the cost follows the real length distribution rather than the longest completion.
5. **Per-row randomness.** Row r of the call draws its step t with
   `fold_in(fold_in(rng, r), t)`, one uniform per row and step (inverse-CDF sampling), so the
   completions do not depend on which batch slot a row decodes in, when it was admitted, or
   how rows were compacted: for a fixed key they equal one batch of all rows without
   compaction (up to float round-off of differently shaped matmuls).

Which distribution `logp` and `entropy` describe: the *tempered* distribution
softmax(logits / temperature) over the full vocabulary, before top-p and top-k truncation, at
the temperature the token was drawn with. With the configured temperature this is the
distribution the policy-gradient losses differentiate (`token_stats` at the same temperature),
so a rollout's `logp` equals the old-policy log-prob of the update step. The token itself is
drawn from that distribution restricted to the top-k / top-p set and renormalised.

Temperature can change without recompiling: `sample(..., temperature=T)` overrides the
configured one for a call (a traced scalar: an entropy controller choosing it per step), and a
`SamplerConfig.temperature_rule` computes a per-row temperature at every step from the live
logits (e.g. a per-token temperature from the current entropy), with a `rule_state` pytree
passed to `sample`.
With `greedy=True` the argmax token is taken and `logp`/`entropy` still describe the tempered
distribution. The KV cache is in the model's compute dtype,
`ModelConfig.kv_cache_bytes_per_token()` bytes per token and row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any

import flax.struct
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
import numpy as np

from entropix_rl import sharding
from entropix_rl.models import decoder
from entropix_rl.models.config import ModelConfig
from entropix_rl.padding import prompt_bucket


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
    max_decode_rows: rows decoded at once per process (0 = all); rounded down to whole
      prompts (a multiple of `num_samples`, at least one prompt). Bounds the KV cache.
    decode_segment: decode steps between refills and compactions of finished rows (0 = one
      segment of the whole budget: no refill, no compaction).
    refill: when rows exceed one decode batch, finished rows are refilled with waiting
      (prompt, sample) pairs between segments (one process only; several processes, or
      False, decode in passes of whole prompts).
    temperature_rule: optional `(logits [R, V] float32, temperature scalar, rule_state) ->
      [R]` per-row temperatures for the step (`TemperatureRule`); None keeps the temperature.
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
  max_decode_rows: int = 0
  decode_segment: int = 16
  refill: bool = True
  temperature_rule: Callable[[jax.Array, jax.Array, Any], jax.Array] | None = None

  def __post_init__(self):
    object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))
    checks = [
        ("temperature", self.temperature > 0, "must be > 0"),
        ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
        ("top_k", self.top_k >= 0, "must be >= 0 (0 disables top-k)"),
        ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
        ("num_samples", self.num_samples >= 1, "must be >= 1"),
        ("min_prompt_bucket", self.min_prompt_bucket >= 1, "must be >= 1"),
        ("max_decode_rows", self.max_decode_rows >= 0, "must be >= 0 (0 = all rows at once)"),
        ("decode_segment", self.decode_segment >= 0, "must be >= 0 (0 = never compact)"),
    ]
    for name, ok, rule in checks:
      if not ok:
        raise ValueError(f"sampler.{name}={getattr(self, name)!r} {rule}")

  @property
  def prompts_per_pass(self) -> int | None:
    """Prompts decoded together (None = all)."""
    if not self.max_decode_rows:
      return None
    return max(1, self.max_decode_rows // self.num_samples)


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


@flax.struct.dataclass
class DecodeState:
  """The rows being decoded. R rows; every array but `step` has R leading (cache: axis 1).

  Attributes:
    cache: the rows' KV cache.
    tokens: `[R]` int32, the token sampled at the previous step (the next decoder input).
    done: `[R]` bool, True once a row emitted a stop token (and for padding rows).
    row_keys: `[R, 2]` uint32 per-row PRNG keys.
    row_ids: `[R]` int32 the call's row index (offset by process), −1 for padding rows.
    step: `[R]` int32, completion tokens each row has emitted (its next step index).
  """

  cache: decoder.KVCache
  tokens: jax.Array
  done: jax.Array
  row_keys: jax.Array
  row_ids: jax.Array
  step: jax.Array


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


def _inverse_cdf(probs: jax.Array, uniform: jax.Array) -> jax.Array:
  """One draw per row of `probs [R, V]`: the first token whose CDF reaches `u` ∈ (0, 1]."""
  cdf = jnp.cumsum(probs, axis=-1)
  target = uniform[:, None] * cdf[:, -1:]
  return jnp.minimum((cdf < target).sum(axis=-1), probs.shape[-1] - 1)


def _choose(
    logits: jax.Array, keys: jax.Array, temperatures: jax.Array, cfg: SamplerConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Picks tokens from `[R, V]` float32 logits with per-row keys and temperatures `[R]`:
  (tokens, logp, entropy), each `[R]`."""
  scaled = logits / temperatures[:, None]
  log_probs = jax.nn.log_softmax(scaled, axis=-1)
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  if cfg.greedy:
    tokens = jnp.argmax(logits, axis=-1)
  else:
    restricted = jax.nn.softmax(_filtered_logits(scaled, cfg.top_k, cfg.top_p), axis=-1)
    uniform = 1.0 - jax.vmap(jax.random.uniform)(keys)  # in (0, 1]
    tokens = _inverse_cdf(restricted, uniform)
  tokens = tokens.astype(jnp.int32)
  logp = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
  return tokens, logp, entropy


def _emit(
    logits: jax.Array,
    state: DecodeState,
    cfg: SamplerConfig,
    temperature: jax.Array,
    rule_state: Any,
) -> tuple[DecodeState, tuple[jax.Array, ...]]:
  """Samples each live row's step `state.step[r]`; returns the advanced state and the step's
  (tokens, live, logp, entropy), each `[R]`, zero/pad where the row was already done. A row
  is done after a stop token or its `max_new_tokens`-th token."""
  keys = jax.vmap(jax.random.fold_in)(state.row_keys, state.step)
  if cfg.temperature_rule is None:
    temperatures = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), state.done.shape)
  else:
    temperatures = cfg.temperature_rule(logits, temperature, rule_state)
  tok, logp, ent = _choose(logits, keys, temperatures, cfg)
  live = ~state.done
  tok = jnp.where(live, tok, cfg.pad_id)
  stop_ids = jnp.asarray(cfg.stop_ids if cfg.stop_ids else (-1,), jnp.int32)
  ends = jnp.isin(tok, stop_ids) | (state.step + 1 >= cfg.max_new_tokens)
  state = state.replace(
      tokens=tok, done=state.done | ends, step=state.step + live.astype(jnp.int32)
  )
  return state, (tok, live, jnp.where(live, logp, 0.0), jnp.where(live, ent, 0.0))


def _constrain(state: DecodeState, mesh: Mesh | None, num_kv_heads: int) -> DecodeState:
  if mesh is None:
    return state
  specs = sharding.kv_cache_specs(mesh, num_kv_heads)
  cache = decoder.KVCache(
      **{
          name: jax.lax.with_sharding_constraint(
              getattr(state.cache, name), NamedSharding(mesh, spec)
          )
          for name, spec in specs.items()
      }
  )
  return state.replace(cache=cache)


def _prefill(
    model_cfg: ModelConfig,
    cfg: SamplerConfig,
    mesh: Mesh | None,
    params: Any,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    row_keys: jax.Array,
    row_ids: jax.Array,
    temperature: jax.Array,
    rule_state: Any,
) -> tuple[DecodeState, tuple[jax.Array, ...]]:
  """Prefills each prompt once, repeats its cache rows `num_samples` times, samples step 0."""
  width = prompt_tokens.shape[1]
  hidden, cache = decoder.prefill(
      model_cfg, params, prompt_tokens, prompt_mask, width + cfg.max_new_tokens
  )
  logits = decoder.logits_from_hidden(model_cfg, params, hidden[:, -1])
  n = cfg.num_samples
  repeat = lambda x, axis: jnp.repeat(x, n, axis=axis) if n > 1 else x
  cache = decoder.KVCache(
      k=repeat(cache.k, 1),
      v=repeat(cache.v, 1),
      valid=repeat(cache.valid, 0),
      lengths=repeat(cache.lengths, 0),
      index=cache.index,
      first_slot=repeat(cache.first_slot, 0),
  )
  state = DecodeState(
      cache=cache,
      tokens=jnp.zeros(row_ids.shape, jnp.int32),
      done=row_ids < 0,
      row_keys=row_keys,
      row_ids=row_ids,
      step=jnp.zeros(row_ids.shape, jnp.int32),
  )
  state = _constrain(state, mesh, model_cfg.num_kv_heads)
  return _emit(repeat(logits, 0), state, cfg, temperature, rule_state)


def _refill(
    model_cfg: ModelConfig,
    cfg: SamplerConfig,
    mesh: Mesh | None,
    params: Any,
    state: DecodeState,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    prompt_of: jax.Array,
    slots: jax.Array,
    row_keys: jax.Array,
    row_ids: jax.Array,
    temperature: jax.Array,
    rule_state: Any,
) -> tuple[DecodeState, tuple[jax.Array, ...]]:
  """Writes K new rows into the batch slots `slots [K]` (R = a padding entry, dropped).

  The Kp distinct prompts `prompt_tokens [Kp, P]` are prefilled once (P = the cache's prompt
  width). The cache's slots are a ring with one write head (`decoder.KVCache`): new row k's
  prompt takes the P slots just behind the head, `[index − P, index)` mod S, so its first
  decoded token lands at the head like every other row's; its other slots are marked empty,
  and it restarts at step 0. A row needs P + max_new_tokens = S slots, so it never overwrites
  itself. Returns the state and the new rows' step-0 (tokens, live, logp, entropy), each `[K]`.
  """
  width = prompt_tokens.shape[1]
  hidden, fresh = decoder.prefill(model_cfg, params, prompt_tokens, prompt_mask, width)
  logits = decoder.logits_from_hidden(model_cfg, params, hidden[:, -1])[prompt_of]
  new = DecodeState(
      cache=None,
      tokens=jnp.zeros(row_ids.shape, jnp.int32),
      done=row_ids < 0,
      row_keys=row_keys,
      row_ids=row_ids,
      step=jnp.zeros(row_ids.shape, jnp.int32),
  )
  new, first = _emit(logits, new, cfg, temperature, rule_state)
  cache, ring = state.cache, state.cache.max_length
  # Every batch row takes its new row `source[r]` (−1: it keeps its own). Written as a select
  # aligned with the batch rows rather than a scatter into them, so on a mesh every device
  # updates its own rows of the cache in place (a scatter made XLA gather the whole cache).
  source = (
      jnp.full(state.done.shape, -1, jnp.int32)
      .at[slots]
      .set(jnp.arange(slots.shape[0], dtype=jnp.int32), mode="drop")
  )
  taken, source = source >= 0, jnp.maximum(source, 0)
  first_slot = (cache.index - width) % ring
  token_at = (jnp.arange(ring) - first_slot) % ring  # the new rows' token index of each slot
  in_prompt = token_at < width
  at = jnp.minimum(token_at, width - 1)
  prompt_rows = prompt_of[source]  # [B]: the prompt each refilled batch row prefilled
  written = taken[:, None] & in_prompt[None, :]  # [B, S]

  def put_kv(buf: jax.Array, value: jax.Array) -> jax.Array:  # value [L, Kp, K, P, Dh]
    rows = jnp.take(value[:, prompt_rows], at, axis=3)  # [L, B, K, S, Dh]
    return jnp.where(written[None, :, None, :, None], rows, buf)

  pick = lambda old, value: jnp.where(taken.reshape((-1,) + (1,) * (old.ndim - 1)), value, old)
  valid = in_prompt[None, :] & jnp.take(prompt_mask[prompt_rows], at, axis=1)
  cache = decoder.KVCache(
      k=put_kv(cache.k, fresh.k),
      v=put_kv(cache.v, fresh.v),
      valid=pick(cache.valid, valid),
      lengths=pick(cache.lengths, fresh.lengths[prompt_rows]),
      index=cache.index,
      first_slot=pick(cache.first_slot, first_slot),
  )
  state = DecodeState(
      cache=cache,
      **{
          name: pick(getattr(state, name), getattr(new, name)[source])
          for name in ("tokens", "done", "row_keys", "row_ids", "step")
      },
  )
  return _constrain(state, mesh, model_cfg.num_kv_heads), first


def _decode(
    model_cfg: ModelConfig,
    cfg: SamplerConfig,
    mesh: Mesh | None,
    segment: int,
    params: Any,
    state: DecodeState,
    temperature: jax.Array,
    rule_state: Any,
) -> tuple[DecodeState, tuple[jax.Array, ...]]:
  """Decodes up to `segment` steps (fewer if every row finishes).

  Returns the state and `[R, segment]` (tokens, live, logp, entropy): column i holds row r's
  step `state.step[r] + i` of the input state; steps not run stay pad/False/0.
  """
  rows = state.tokens.shape[0]
  out = (
      jnp.full((rows, segment), cfg.pad_id, jnp.int32),
      jnp.zeros((rows, segment), bool),
      jnp.zeros((rows, segment), jnp.float32),
      jnp.zeros((rows, segment), jnp.float32),
  )

  def cond(carry):
    i, state, _ = carry
    return (i < segment) & ~jnp.all(state.done)

  def body(carry):
    i, state, out = carry
    hidden, cache = decoder.forward_hidden(
        model_cfg, params, state.tokens[:, None], cache=state.cache
    )
    logits = decoder.logits_from_hidden(model_cfg, params, hidden[:, 0])
    state = _constrain(state.replace(cache=cache), mesh, model_cfg.num_kv_heads)
    state, step_out = _emit(logits, state, cfg, temperature, rule_state)
    out = tuple(
        jax.lax.dynamic_update_slice_in_dim(buf, val[:, None], i, axis=1)
        for buf, val in zip(out, step_out)
    )
    return i + 1, state, out

  _, state, out = jax.lax.while_loop(cond, body, (jnp.int32(0), state, out))
  return state, out


def _compact(state: DecodeState, rows: jax.Array) -> DecodeState:
  """The rows `rows [R']` of `state` (−1 = a padding row: done, row id −1)."""
  take = lambda x, axis: jnp.take(x, jnp.maximum(rows, 0), axis=axis)
  cache = state.cache
  cache = decoder.KVCache(
      k=take(cache.k, 1),
      v=take(cache.v, 1),
      valid=take(cache.valid, 0),
      lengths=take(cache.lengths, 0),
      index=cache.index,
      first_slot=take(cache.first_slot, 0),
  )
  return DecodeState(
      cache=cache,
      tokens=take(state.tokens, 0),
      done=take(state.done, 0) | (rows < 0),
      row_keys=take(state.row_keys, 0),
      row_ids=jnp.where(rows < 0, -1, take(state.row_ids, 0)),
      step=take(state.step, 0),
  )


def state_shardings(model_cfg: ModelConfig, mesh: Mesh) -> DecodeState:
  """Shardings of a `DecodeState`: rows over data x fsdp, KV heads over tensor if it divides."""
  specs = sharding.kv_cache_specs(mesh, model_cfg.num_kv_heads)
  rows = sharding.batch_sharding(mesh)
  return DecodeState(
      cache=decoder.KVCache(**{k: NamedSharding(mesh, s) for k, s in specs.items()}),
      tokens=rows,
      done=rows,
      row_keys=sharding.batch_sharding(mesh, 2),
      row_ids=rows,
      step=rows,
  )


def empty_state(model_cfg: ModelConfig, rows: int, slots: int) -> DecodeState:
  """A `DecodeState` of `rows` rows and `slots` cache slots, all done (for `jax.eval_shape`)."""
  return DecodeState(
      cache=decoder.init_cache(model_cfg, rows, slots),
      tokens=jnp.zeros((rows,), jnp.int32),
      done=jnp.ones((rows,), bool),
      row_keys=jnp.zeros((rows, 2), jnp.uint32),
      row_ids=jnp.full((rows,), -1, jnp.int32),
      step=jnp.zeros((rows,), jnp.int32),
  )


@functools.lru_cache(maxsize=64)
def compiled_prefill(model_cfg: ModelConfig, cfg: SamplerConfig, mesh: Mesh | None = None):
  """Jitted `_prefill`; on a mesh with explicit shardings (rows over data x fsdp, params by
  `sharding.param_shardings`, KV cache by batch and heads)."""
  fn = functools.partial(_prefill, model_cfg, cfg, mesh)
  if mesh is None:
    return jax.jit(fn)
  rows, rows2 = sharding.batch_sharding(mesh), sharding.batch_sharding(mesh, 2)
  rep = sharding.replicated(mesh)
  return sharding.jit_on_mesh(
      fn,
      mesh,
      in_shardings=(sharding.param_shardings(model_cfg, mesh), rows2, rows2, rows2, rows, rep, rep),
      out_shardings=(state_shardings(model_cfg, mesh), (rows,) * 4),
  )


@functools.lru_cache(maxsize=64)
def compiled_decode(
    model_cfg: ModelConfig, cfg: SamplerConfig, segment: int, mesh: Mesh | None = None
):
  """Jitted `_decode` of `segment` steps; the state is donated (its cache is updated in place)."""
  fn = functools.partial(_decode, model_cfg, cfg, mesh, segment)
  if mesh is None:
    return jax.jit(fn, donate_argnums=1)
  state_sh = state_shardings(model_cfg, mesh)
  rows2 = sharding.batch_sharding(mesh, 2)
  rep = sharding.replicated(mesh)
  return sharding.jit_on_mesh(
      fn,
      mesh,
      in_shardings=(sharding.param_shardings(model_cfg, mesh), state_sh, rep, rep),
      out_shardings=(state_sh, (rows2,) * 4),
      donate_argnums=1,
  )


@functools.lru_cache(maxsize=64)
def compiled_refill(model_cfg: ModelConfig, cfg: SamplerConfig, mesh: Mesh | None = None):
  """Jitted `_refill`; the state is donated. On a mesh the new prompts and rows are replicated
  (each device prefills them; the rows land in the devices that hold their slots)."""
  fn = functools.partial(_refill, model_cfg, cfg, mesh)
  if mesh is None:
    return jax.jit(fn, donate_argnums=1)
  state_sh = state_shardings(model_cfg, mesh)
  rep = sharding.replicated(mesh)
  return sharding.jit_on_mesh(
      fn,
      mesh,
      in_shardings=(sharding.param_shardings(model_cfg, mesh), state_sh) + (rep,) * 8,
      out_shardings=(state_sh, (rep,) * 4),
      donate_argnums=1,
  )


def abstract_refill_inputs(
    mesh: Mesh, prompts: int, rows: int, prompt_len: int
) -> tuple[jax.ShapeDtypeStruct, ...]:
  """Abstract, replicated `compiled_refill` inputs after the state, at the worst refill: all
  `rows` of the batch freed at once and `prompts` new prompts of `prompt_len` tokens (to
  compile it and read its memory): prompt tokens and mask, prompt_of, slots, row keys, row ids.
  """
  rep = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.replicated(mesh))
  return (
      rep((prompts, prompt_len), jnp.int32),
      rep((prompts, prompt_len), bool),
      rep((rows,), jnp.int32),
      rep((rows,), jnp.int32),
      rep((rows, 2), jnp.uint32),
      rep((rows,), jnp.int32),
  )


@functools.lru_cache(maxsize=64)
def compiled_compact(model_cfg: ModelConfig, mesh: Mesh | None = None):
  """Jitted `_compact`; the output rows are sharded like the input's."""
  if mesh is None:
    return jax.jit(_compact)
  state_sh = state_shardings(model_cfg, mesh)
  return sharding.jit_on_mesh(
      _compact, mesh, in_shardings=(state_sh, sharding.replicated(mesh)), out_shardings=state_sh
  )


def _gather(x: jax.Array) -> np.ndarray:
  """All rows of a (possibly multi-host) row-sharded array, on every host."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _compacted_size(live: int, rows: int, shards: int) -> int | None:
  """The smaller batch to compact `rows` rows with `live` of them live into, or None."""
  target = max(shards, prompt_bucket(max(live, 1), 1))
  target = -(-target // shards) * shards
  return target if target * 2 <= rows else None


@dataclasses.dataclass(frozen=True)
class _CallRows:
  """This host's side of one `sample` call: its prompts, per-row keys and output buffers.

  Row `i` (prompt `i // num_samples`) has the global id `offset + i`, unique across hosts
  because compaction moves rows between devices and hosts.
  """

  prompts: np.ndarray  # [B, P] left-padded
  mask: np.ndarray  # [B, P]
  keys: np.ndarray  # [B * num_samples, 2]
  outputs: tuple[np.ndarray, ...]  # [B * num_samples, C] tokens, live, logp, entropy
  num_samples: int
  offset: int

  def store(self, ids: np.ndarray, starts: np.ndarray, values: tuple[jax.Array, ...]) -> None:
    """Writes decoded steps: column i of row r of each `[R, W]` value is step `starts[r] + i`
    of the row with global id `ids[r]`; only live entries of this host's rows are written."""
    values = tuple(_gather(v) for v in values)
    mine = (ids >= self.offset) & (ids < self.offset + self.keys.shape[0])
    r, i = np.nonzero(values[1].astype(bool) & mine[:, None])
    for buf, value in zip(self.outputs, values):
      buf[ids[r] - self.offset, starts[r] + i] = value[r, i]


def _admitted(waiting: np.ndarray, free: int, num_samples: int, max_prompts: int) -> np.ndarray:
  """The first waiting rows (in row order) that fit `free` slots and span at most
  `max_prompts` prompts, so a refill never prefills more prompts than the batch started with."""
  take = waiting[:free]
  return take[take // num_samples < take[0] // num_samples + max_prompts]


def _refill_rows(
    model_cfg: ModelConfig,
    cfg: SamplerConfig,
    mesh: Mesh | None,
    params: Any,
    call: _CallRows,
    state: DecodeState,
    admitted: np.ndarray,
    slots: np.ndarray,
    temperature: jax.Array,
    rule_state: Any,
) -> DecodeState:
  """Prefills the call's rows `admitted` into the batch slots `slots` and stores their first
  step. Row and prompt counts are rounded up to powers of two (one program per size)."""
  k, batch = admitted.size, int(state.done.shape[0])
  prompts, prompt_of = np.unique(admitted // call.num_samples, return_inverse=True)
  kp = prompt_bucket(prompts.size, 1)
  prompts = np.concatenate([prompts, np.full(kp - prompts.size, prompts[0])])
  padded = lambda x, fill: np.concatenate(
      [x, np.full((prompt_bucket(k, 1) - k,) + x.shape[1:], fill, x.dtype)]
  )
  ids = padded((admitted + call.offset).astype(np.int32), -1)
  state, first = compiled_refill(model_cfg, cfg, mesh)(
      params,
      state,
      call.prompts[prompts],
      call.mask[prompts],
      padded(prompt_of.astype(np.int32), 0),
      padded(slots[:k].astype(np.int32), batch),
      padded(call.keys[admitted], 0),
      ids,
      temperature,
      rule_state,
  )
  call.store(ids, np.zeros_like(ids), tuple(x[:, None] for x in first))
  return state


def _decode_batch(
    model_cfg: ModelConfig,
    cfg: SamplerConfig,
    mesh: Mesh | None,
    params: Any,
    call: _CallRows,
    prompt_ids: np.ndarray,
    waiting: np.ndarray,
    temperature: jax.Array,
    rule_state: Any,
) -> None:
  """Decodes a batch started by prompts `prompt_ids` (−1 = a padding prompt), refilling its
  finished rows with the `waiting` rows, until every row is done; the rows land in `call`."""
  put = (lambda x: x) if mesh is None else (lambda x: sharding.to_global(x, mesh))
  shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  n = cfg.num_samples
  first = np.maximum(prompt_ids, 0)
  rows = (first[:, None] * n + np.arange(n)[None, :]).reshape(-1)
  row_ids = np.where(np.repeat(prompt_ids >= 0, n), rows + call.offset, -1).astype(np.int32)
  state, out = compiled_prefill(model_cfg, cfg, mesh)(
      params,
      *put((call.prompts[first], call.mask[first], call.keys[rows])),
      *put((row_ids,)),
      temperature,
      rule_state,
  )
  ids = _gather(state.row_ids)  # every host's rows
  call.store(ids, np.zeros(ids.shape, np.int32), tuple(x[:, None] for x in out))
  decode = compiled_decode(model_cfg, cfg, cfg.decode_segment or cfg.max_new_tokens, mesh)
  while True:
    done = _gather(state.done)
    if waiting.size and done.any():
      admitted = _admitted(waiting, int(done.sum()), n, prompt_ids.size)
      waiting = waiting[admitted.size :]
      state = _refill_rows(
          model_cfg,
          cfg,
          mesh,
          params,
          call,
          state,
          admitted,
          np.flatnonzero(done),
          temperature,
          rule_state,
      )
      continue
    if done.all():
      return
    new_size = _compacted_size(int((~done).sum()), done.size, shards)
    if cfg.decode_segment and new_size is not None:
      live_rows = np.flatnonzero(~done)
      keep = np.full((new_size,), -1, np.int32)
      keep[: live_rows.size] = live_rows
      state = compiled_compact(model_cfg, mesh)(state, jnp.asarray(keep))
    ids, starts = _gather(state.row_ids), _gather(state.step)
    state, out = decode(params, state, temperature, rule_state)
    call.store(ids, starts, out)


def sample(
    model_cfg: ModelConfig,
    params: Any,
    prompt_tokens: np.ndarray | jax.Array,
    prompt_lengths: np.ndarray | jax.Array | Sequence[int],
    rng: jax.Array,
    sampler_cfg: SamplerConfig,
    *,
    mesh: Mesh | None = None,
    temperature: float | jax.Array | None = None,
    rule_state: Any = None,
) -> Rollout:
  """Samples `sampler_cfg.num_samples` completions for each left-padded prompt.

  Args:
    model_cfg: the policy's config.
    params: its param tree.
    prompt_tokens: `[B, P]` int token ids, left-padded (real tokens at the right end).
    prompt_lengths: `[B]` real tokens per prompt, in [1, P].
    rng: PRNG key.
    sampler_cfg: see `SamplerConfig`.
    mesh: optional device mesh; each pass's prompts and rows must divide by its data x fsdp
      size (padding prompts are added to a short last pass).
    temperature: overrides `sampler_cfg.temperature` for this call without recompiling.
    rule_state: the pytree `sampler_cfg.temperature_rule` reads (replicated on a mesh).

  Returns:
    A `Rollout` with N = B x num_samples rows; row `i` belongs to prompt `i // num_samples`.
    On a mesh, `prompt_tokens` are this host's prompts and the rollout holds this host's rows
    (numpy); all hosts call `sample` together with the same number of prompts.

  Raises:
    ValueError: for a prompt length outside [1, P], or prompt + generation longer than the
      model's `max_position_embeddings`.
  """
  tokens = np.asarray(prompt_tokens, np.int32)
  lengths = np.asarray(prompt_lengths, np.int32)
  if tokens.ndim != 2 or lengths.shape != (tokens.shape[0],):
    raise ValueError(
        f"prompt_tokens must be [B, P] and prompt_lengths [B]; got "
        f"{tokens.shape} and {lengths.shape}"
    )
  width = tokens.shape[1]
  if lengths.size and (lengths.min() < 1 or lengths.max() > width):
    raise ValueError(
        f"prompt_lengths must be in [1, {width}]; got min {lengths.min()}, " f"max {lengths.max()}"
    )
  bucket = prompt_bucket(int(lengths.max()) if lengths.size else 1, sampler_cfg.min_prompt_bucket)
  if bucket + sampler_cfg.max_new_tokens > model_cfg.max_position_embeddings:
    bucket = max(width, int(lengths.max()) if lengths.size else 1)  # the caller's width fits
  total = bucket + sampler_cfg.max_new_tokens
  if total > model_cfg.max_position_embeddings:
    raise ValueError(
        f"prompt bucket {bucket} + sampler.max_new_tokens "
        f"{sampler_cfg.max_new_tokens} = {total} exceeds the model's "
        f"max_position_embeddings={model_cfg.max_position_embeddings}"
    )
  keep = min(width, bucket)
  padded = np.full((tokens.shape[0], bucket), sampler_cfg.pad_id, np.int32)
  padded[:, bucket - keep :] = tokens[:, width - keep :]
  mask = np.arange(bucket)[None, :] >= (bucket - lengths)[:, None]
  padded = np.where(mask, padded, sampler_cfg.pad_id)

  b, n, c = tokens.shape[0], sampler_cfg.num_samples, sampler_cfg.max_new_tokens
  if temperature is not None and not isinstance(temperature, jax.Array) and not temperature > 0:
    raise ValueError(f"sample(temperature={temperature!r}) must be > 0")
  base_temperature = jnp.float32(sampler_cfg.temperature if temperature is None else temperature)
  per_pass = sampler_cfg.prompts_per_pass or max(b, 1)
  if mesh is not None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count()
    per_pass = -(-per_pass // shards) * shards
  first_row = jax.process_index() * b * n
  all_keys = jax.vmap(lambda r: jax.random.fold_in(rng, r))(first_row + jnp.arange(b * n))
  all_keys = np.asarray(
      jax.random.key_data(all_keys)
      if jnp.issubdtype(all_keys.dtype, jax.dtypes.prng_key)
      else all_keys
  )
  outputs = (
      np.full((b * n, c), sampler_cfg.pad_id, np.int32),
      np.zeros((b * n, c), bool),
      np.zeros((b * n, c), np.float32),
      np.zeros((b * n, c), np.float32),
  )
  call = _CallRows(padded, mask, all_keys, outputs, n, first_row)
  run = functools.partial(
      _decode_batch,
      model_cfg,
      sampler_cfg,
      mesh,
      params,
      call,
      temperature=base_temperature,
      rule_state=rule_state,
  )
  if sampler_cfg.refill and jax.process_count() == 1 and b > per_pass:
    run(np.arange(per_pass), np.arange(per_pass * n, b * n))
  else:
    for start in range(0, b, per_pass):
      prompt_ids = np.arange(start, start + per_pass)
      run(np.where(prompt_ids < b, prompt_ids, -1), np.zeros((0,), np.int64))
  comp, comp_mask, logp, entropy = outputs
  comp = np.where(comp_mask, comp, sampler_cfg.pad_id)
  lengths_out = comp_mask.sum(axis=1, dtype=np.int32)
  stopped = (
      np.isin(comp, sampler_cfg.stop_ids) & comp_mask
      if sampler_cfg.stop_ids
      else np.zeros_like(comp_mask)
  )
  return Rollout(
      prompt_tokens=np.repeat(padded, n, axis=0),
      prompt_lengths=np.repeat(lengths, n, axis=0),
      completion_tokens=comp,
      completion_mask=comp_mask,
      logp=logp,
      entropy=entropy,
      lengths=lengths_out,
      truncated=~stopped.any(axis=1),
      group_ids=np.repeat(np.arange(b, dtype=np.int32), n),
  )
