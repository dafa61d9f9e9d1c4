"""The registry of interventions: one entry per module, looked up by name.

An intervention is one of three kinds, applied by `policy_loss` in this order
(INTERVENTIONS.md, "How these map onto entropix_rl"):

* `advantage_shaper`: `fn(cfg, inputs) -> advantages [B, T]`; every registered shaper runs and
  returns `inputs.advantages` unchanged when its section disables it.
* `surrogate`: `fn(cfg, inputs) -> SurrogateOutput`; exactly one runs, chosen by `loss.name`.
  Token selectors (Clip-Cov, KL-Cov, 80/20) are surrogates that also report a pick.
* `regulariser`: `fn(cfg, inputs) -> RegulariserOutput`; every registered regulariser runs, adds
  its `loss` to the total and reports `metric` under its own name in `aux`.

`config` is the frozen dataclass holding the intervention's constants; its defaults become
the `loss.<name>` section of `default_loss_config()` and it is validated by its
`validate(path)` method. Sections are looked up as attributes of `LossConfig`
(`cfg.clip_cov.ratio`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

KINDS = ("surrogate", "advantage_shaper", "regulariser")

Predicate = Callable[[Any], bool]


@dataclasses.dataclass(frozen=True)
class Intervention:
  """One registered intervention.

  Attributes:
    name: the registry key; also the config section name and, for regularisers, the `aux` key.
    kind: one of `KINDS`.
    fn: the function (signature by kind, see the module docstring).
    config: frozen dataclass of the intervention's constants, or None if it has none.
    needs_entropy: `LossConfig -> bool`, whether `fn` reads the per-token entropy.
    needs_entropy_grad: `LossConfig -> bool`, whether the loss is differentiated through it.
  """

  name: str
  kind: str
  fn: Callable[..., Any]
  config: type | None
  needs_entropy: Predicate
  needs_entropy_grad: Predicate


_REGISTRY: dict[str, Intervention] = {}


def _predicate(value: bool | Predicate) -> Predicate:
  return value if callable(value) else (lambda cfg: bool(value))


def register(name: str, *, kind: str = "surrogate", config: type | None = None,
             needs_entropy: bool | Predicate = False,
             needs_entropy_grad: bool | Predicate = False) -> Callable[[Callable], Callable]:
  """Decorator that registers `fn` under `name` (see the module docstring for the kinds).

  Example:
    @register("my_selector", config=MySelectorConfig, needs_entropy=True)
    def my_selector(cfg: LossConfig, inputs: LossInputs) -> SurrogateOutput: ...
  """
  if kind not in KINDS:
    raise ValueError(f"register({name!r}, kind={kind!r}); allowed kinds: {KINDS}")

  def decorator(fn: Callable) -> Callable:
    if name in _REGISTRY:
      raise ValueError(f"intervention {name!r} is already registered by {_REGISTRY[name].fn}")
    _REGISTRY[name] = Intervention(name=name, kind=kind, fn=fn, config=config,
                                   needs_entropy=_predicate(needs_entropy),
                                   needs_entropy_grad=_predicate(needs_entropy_grad))
    return fn

  return decorator


def get(name: str) -> Intervention:
  """The intervention registered under `name`."""
  if name not in _REGISTRY:
    raise ValueError(f"no intervention named {name!r}; registered: {tuple(_REGISTRY)}")
  return _REGISTRY[name]


def of_kind(kind: str) -> tuple[Intervention, ...]:
  """All interventions of one kind, in registration (import) order."""
  return tuple(entry for entry in _REGISTRY.values() if entry.kind == kind)


def names(kind: str) -> tuple[str, ...]:
  return tuple(entry.name for entry in of_kind(kind))


def sections() -> dict[str, type]:
  """Config section name -> its dataclass, for every intervention that has constants."""
  return {entry.name: entry.config for entry in _REGISTRY.values() if entry.config is not None}
