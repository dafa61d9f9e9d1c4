"""The registry of interventions: what each one reads, computes, keeps and reports.

An `Intervention` is one module's registration. Its kind says where it acts:

| kind | runs | `apply(cfg, batch, stats, state[, agg])` returns |
| --- | --- | --- |
| `advantage` | once per update, on the whole rollout (behaviour-policy values) | advantages `[N, T]` |
| `advantage_shaper` | in every loss call, before the surrogate | advantages `[B, T]` |
| `surrogate` | in every loss call; exactly one, named by `loss.name` | `SurrogateOutput` |
| `regulariser` | in every loss call, after the surrogate | `RegulariserOutput` |
| `rollout` | on the host, once per step, on the sampled rows (no loss part) | — |

Composition order is explicit: the order of registration, which `entropix_rl.interventions` does in
one list (`register(..., before=name)` places a user's intervention elsewhere). It never
depends on import order.

Optional hooks:

* `needs(cfg)`: the `TokenBatch` fields (`batch.FIELDS`) and logit features it reads; the
  trainer computes only what some active intervention needs. `grad_needs(cfg)`: those the loss
  is differentiated through (`entropy` or a current-policy feature).
* `features`: `TokenFeature`s computed from the full logits of each token: a tuple, or a
  function `LossConfig -> tuple` when a feature depends on the intervention's constants (a
  min-p threshold, a top-p mass).
* `scope_stats(cfg, batch, state, key)`: statistics over a selection scope (a whole
  mini-batch, or chunks of it with `selection_scope='microbatch'`), without gradient; every
  leaf has the scope's rows as leading axis. They are computed once per mini-batch and sliced
  per micro-batch, so token picks are exact under gradient accumulation.
* `init_state(cfg)`, `before_update(cfg, state, rollout)`, `after_update(cfg, state,
  rollout)`: state kept in the train state (checkpointed), updated once per RL step around
  the optimizer updates with the whole rollout's behaviour-policy `TokenBatch`. The update
  hooks return `(state, metrics)`.
* `linear`: False when the loss is a non-linear function of an aggregate (e.g. a squared
  deviation), which makes micro-batched updates run a no-grad planning pass first.

Rollout-side hooks, run on the host by `train/rollout.py` (any kind may have them):

* `samples_per_prompt(cfg, group_size, state)`: responses to sample per prompt before
  `rollout` reshapes the group (a vote over more samples than are trained on, the first
  samples of a branching tree).
* `sampling_temperature(cfg, state)`: the temperature of this step's sampling.
* `temperature_rule(cfg)`: a per-row, per-step temperature rule (`sampling.SamplerConfig`),
  which reads this intervention's state.
* `rollout(cfg, responses, ctx, state)`: reshapes the step's scored `Responses` (sample
  more through `ctx`, replace rewards, choose rows) and returns them with exactly
  `rl.group_size` adjacent rows per prompt.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

KINDS = ("advantage", "advantage_shaper", "surrogate", "regulariser", "rollout")

Predicate = Callable[[Any], bool]
Names = Callable[[Any], frozenset]


@dataclasses.dataclass(frozen=True)
class TokenFeature:
  """A per-token quantity computed from the full-vocabulary logits.

  Attributes:
    name: the key in `TokenBatch.features` (current policy) or `.old_features` (behaviour).
    fn: `(logits [n, V] float32 at temperature 1, targets [n] int32, temperature) -> [n]`.
    policy: "current" (computed in the loss pass, differentiable) or "old" (behaviour policy,
      computed once per update without gradient).
  """

  name: str
  fn: Callable[[jax.Array, jax.Array, float], jax.Array]
  policy: str = "current"


class SurrogateOutput(NamedTuple):
  """What a surrogate returns, all `[B, T]`.

  Attributes:
    per_token_loss: the per-token policy-gradient loss L_t.
    loss_mask: float32 aggregation weights (`m`, or `m ⊙ s` for selectors that aggregate over
      their pick only).
    selected: bool, the tokens the intervention picked (all False if it picks none).
    clipped: bool, tokens whose clip bound is active; all False without clipping.
  """

  per_token_loss: jax.Array
  loss_mask: jax.Array
  selected: jax.Array
  clipped: jax.Array

  @classmethod
  def unpicked(
      cls, per_token_loss: jax.Array, mask: jax.Array, clipped: jax.Array
  ) -> SurrogateOutput:
    """The output of a surrogate that picks no token and aggregates over every valid one.

    Args:
      per_token_loss: `[B, T]` per-token loss L_t.
      mask: `[B, T]` float32 response mask m, the aggregation weights.
      clipped: `[B, T]` bool, tokens whose clip bound is active.

    Returns:
      `SurrogateOutput(per_token_loss, loss_mask=mask, selected=all False [B, T], clipped)`.
    """
    return cls(
        per_token_loss=per_token_loss,
        loss_mask=mask,
        selected=jnp.zeros(mask.shape, bool),
        clipped=clipped,
    )


class RegulariserOutput(NamedTuple):
  """What a regulariser returns: `loss` is added to the total, `metric` goes to `aux[name]`."""

  loss: jax.Array
  metric: jax.Array


def _nothing(cfg) -> frozenset:
  return frozenset()


@dataclasses.dataclass(frozen=True)
class Intervention:
  """One registered intervention (module docstring).

  Attributes:
    name: the registry key; also the config section name and, for regularisers, the `aux` key.
    kind: one of `KINDS`.
    apply: the function (signature by kind, module docstring).
    config: frozen dataclass of the intervention's constants (`loss.<name>`), or None.
    active: `LossConfig -> bool`; surrogates are active when `loss.name` names them.
    needs, grad_needs: `LossConfig -> frozenset` of TokenBatch fields / feature names.
    features: the logit features it defines: a tuple, or `LossConfig -> tuple` for features
      built from its constants (`features_for(cfg)` reads either).
    scope_stats: `(cfg, batch, state, key) -> pytree` of `[rows, ...]` arrays, or None.
    init_state: `LossConfig -> pytree`, or None (no state).
    before_update, after_update: `(cfg, state, rollout) -> (state, metrics)`, or None.
    linear: whether its loss is linear in the aggregates it takes.
    samples_per_prompt, sampling_temperature, temperature_rule, rollout: the rollout-side
      hooks (module docstring), or None.
  """

  name: str
  kind: str
  apply: Callable[..., Any] | None
  config: type | None = None
  active: Predicate | None = None
  needs: Names = _nothing
  grad_needs: Names = _nothing
  features: tuple[TokenFeature, ...] | Callable[[Any], tuple[TokenFeature, ...]] = ()
  scope_stats: Callable[..., Any] | None = None
  init_state: Callable[[Any], Any] | None = None
  before_update: Callable[..., Any] | None = None
  after_update: Callable[..., Any] | None = None
  linear: bool = True
  samples_per_prompt: Callable[[Any, int, Any], int] | None = None
  sampling_temperature: Callable[[Any, Any], Any] | None = None
  temperature_rule: Callable[[Any], Callable] | None = None
  rollout: Callable[..., Any] | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"intervention {self.name!r}: kind={self.kind!r}; allowed: {KINDS}")
    if self.active is None:
      default = (
          (lambda cfg: cfg.name == self.name) if self.kind == "surrogate" else (lambda cfg: True)
      )
      object.__setattr__(self, "active", default)

  def is_active(self, cfg) -> bool:
    return bool(self.active(cfg))

  def features_for(self, cfg) -> tuple[TokenFeature, ...]:
    """The logit features this intervention defines under `cfg`."""
    return tuple(self.features(cfg) if callable(self.features) else self.features)


_REGISTRY: list[Intervention] = []


def register(entry: Intervention, *, before: str | None = None) -> Intervention:
  """Adds `entry` at the end of the composition order, or just before the entry `before`."""
  if any(e.name == entry.name for e in _REGISTRY):
    raise ValueError(f"intervention {entry.name!r} is already registered")
  if before is None:
    _REGISTRY.append(entry)
  else:
    _REGISTRY.insert(names().index(get(before).name), entry)
  return entry


def unregister(name: str) -> None:
  """Removes a registered intervention (for tests and notebooks that add their own)."""
  _REGISTRY.remove(get(name))


def get(name: str) -> Intervention:
  """The intervention registered under `name`."""
  for entry in _REGISTRY:
    if entry.name == name:
      return entry
  raise ValueError(f"no intervention named {name!r}; registered: {names()}")


def entries(kind: str | None = None) -> tuple[Intervention, ...]:
  """Registered interventions (of one kind), in composition order."""
  return tuple(e for e in _REGISTRY if kind is None or e.kind == kind)


def names(kind: str | None = None) -> tuple[str, ...]:
  return tuple(e.name for e in entries(kind))


def sections() -> dict[str, type]:
  """Config section name -> its dataclass, for every intervention that has constants."""
  return {e.name: e.config for e in _REGISTRY if e.config is not None}
