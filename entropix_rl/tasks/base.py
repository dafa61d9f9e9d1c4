"""What every verifiable task provides: examples, a verifier, answer keys and demonstrations.

A task turns a model's completion text into a reward in [0, 1] (`verify`), into the key of its
final answer (`answer_key`), and writes a correct completion for supervised warm starts
(`demonstration`).

Answer keys cluster the responses to one prompt by their final answer (SEED-GRPO's semantic
entropy; later majority votes and cluster rewards). `mode` is one of `ANSWER_KEY_MODES`:

* `exact_string`: the final answer's text as written (stripped), so `061+62` and `61+62`
  differ;
* `value`: what the answer evaluates to (`061+62` and `100+23` are both 123), parsed, never
  executed.

A completion without a well-formed final answer has key None. Procedurally generated
tasks (`GeneratedTask`) also draw examples: example `i` of split `s` is a pure function of
`(seed, s, i)`, and the train and eval splits never share a problem, because each problem is
assigned to one split by a seed-independent hash of its canonical key.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Mapping
import dataclasses
import hashlib
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

SPLITS = ("train", "eval")
ANSWER_KEY_MODES = ("exact_string", "value")
_SPLIT_IDS = {"train": 0, "eval": 1}
_HASH_SCALE = float(2**64)


@dataclasses.dataclass(frozen=True)
class Example:
  """One prompt and what its verifier needs.

  Attributes:
    prompt: the prompt text, before any chat template.
    answer: the ground truth (single-answer tasks, math) or one reference solution
      (many-answer tasks).
    index: the example's index in its split or the record's position in its file (named in
      errors).
    info: task-specific data the verifier reads, e.g. countdown's `numbers` and `target`.
  """

  prompt: str
  answer: str
  index: int = -1
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
  """A verifiable task. `alphabet` raises ValueError for tasks that need a real tokenizer.

  `file_fields` names the `Example.info` fields its verifier reads: a prompt file
  (`data.source="file"`) must carry them in every record beside the prompt and the answer.
  """

  name: str
  file_fields: tuple[str, ...]

  @property
  def alphabet(self) -> str:
    ...

  def verify(self, example: Example, completion: str) -> float:
    ...

  def answer_key(self, example: Example, completion: str, mode: str) -> Hashable | None:
    ...

  def demonstration(self, example: Example, rng: np.random.Generator) -> str:
    ...


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; allowed: {SPLITS}")


def check_answer_key_mode(mode: str) -> None:
  if mode not in ANSWER_KEY_MODES:
    raise ValueError(f"rl.cluster_by={mode!r}; allowed: {ANSWER_KEY_MODES}")


def hash_unit(text: str) -> float:
  """A stable (process- and seed-independent) hash of `text` into [0, 1)."""
  digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") / _HASH_SCALE


def in_eval_split(key: str, eval_fraction: float) -> bool:
  """Whether the problem with canonical `key` belongs to the eval split."""
  return hash_unit(key) < eval_fraction


@dataclasses.dataclass(frozen=True)
class GeneratedTask(abc.ABC):
  """A procedurally generated task with disjoint train and eval problem sets.

  Subclasses implement `_draw` (a random problem from the whole problem space) and
  `split_key` (a canonical key: two prompts that pose the same problem share it). A problem
  is in the eval split iff `hash(name:key) < eval_fraction`; `example` draws until it gets a
  problem of the requested split.

  Attributes:
    eval_fraction: share of the problem space reserved for evaluation, in (0, 1).
  """

  name = "generated"
  file_fields: ClassVar[tuple[str, ...]] = ()  # the `info` fields `verify` reads (`Task`)
  eval_fraction: float = 0.1
  max_draws: int = dataclasses.field(default=10_000, repr=False)

  def __post_init__(self):
    if not 0.0 < self.eval_fraction < 1.0:
      raise ValueError(f"{self.name}: eval_fraction={self.eval_fraction} must be in (0, 1)")

  @property
  @abc.abstractmethod
  def alphabet(self) -> str:
    """The characters of every prompt and demonstration, for a `CharTokenizer`."""

  @abc.abstractmethod
  def _draw(self, rng: np.random.Generator) -> Example:
    """A uniformly random problem of the whole space (`index` left unset)."""

  @abc.abstractmethod
  def split_key(self, example: Example) -> str:
    """The canonical key deciding the example's split."""

  @abc.abstractmethod
  def verify(self, example: Example, completion: str) -> float:
    """1.0 if `completion` is a correct answer to `example`, else 0.0 (malformed: 0.0)."""

  @abc.abstractmethod
  def answer_key(self, example: Example, completion: str, mode: str) -> Hashable | None:
    """The key of the completion's final answer in `mode` (module docstring), or None."""

  @abc.abstractmethod
  def demonstration(self, example: Example, rng: np.random.Generator) -> str:
    """A correct completion (a random one where the task has many)."""

  def split_of(self, example: Example) -> str:
    return (
        "eval"
        if in_eval_split(f"{self.name}:{self.split_key(example)}", self.eval_fraction)
        else "train"
    )

  def example(self, seed: int, split: str, index: int) -> Example:
    """Example `index` of `split`: a pure function of `(seed, split, index)`.

    Raises:
      ValueError: for a bad split, a negative seed or index, or a problem space with no
        problem in `split` (found after `max_draws` draws).
    """
    check_split(split)
    if seed < 0 or index < 0:
      raise ValueError(f"{self.name}: seed={seed} and index={index} must be >= 0")
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    for _ in range(self.max_draws):
      ex = self._draw(rng)
      if self.split_of(ex) == split:
        return dataclasses.replace(ex, index=index)
    raise ValueError(
        f"{self.name}: no {split!r} problem found in {self.max_draws} draws; the "
        f"problem space is too small for eval_fraction={self.eval_fraction} ({self})"
    )
