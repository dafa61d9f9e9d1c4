"""Multi-digit arithmetic with one final answer: `123+456=` -> `579`."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from entropix_rl.tasks.base import Example, GeneratedTask, check_answer_key_mode

_INTEGER = re.compile(r"-?[0-9]{1,40}")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclasses.dataclass(frozen=True)
class Arithmetic(GeneratedTask):
  """`a<op>b=` with `digits`-digit operands; the completion must be the exact integer result.

  A single-answer task: entropy collapse here is simply the model learning the answer
  (docs/results.md), so it suits accuracy studies, not intervention studies.

  Attributes:
    digits: digits per operand (>= 1).
    ops: operators to draw from, a non-empty subset of "+-*".
  """

  name = "arithmetic"
  digits: int = 3
  ops: str = "+"

  def __post_init__(self):
    super().__post_init__()
    if self.digits < 1:
      raise ValueError(f"arithmetic: digits={self.digits} must be >= 1")
    if not self.ops or set(self.ops) - set(_OPS):
      raise ValueError(
          f"arithmetic: ops={self.ops!r}; allowed: a non-empty subset of " f"{''.join(_OPS)!r}"
      )

  @property
  def alphabet(self) -> str:
    return "0123456789+-*="

  def _draw(self, rng: np.random.Generator) -> Example:
    low, high = 10 ** (self.digits - 1) if self.digits > 1 else 0, 10**self.digits
    a, b = (int(x) for x in rng.integers(low, high, size=2))
    op = self.ops[int(rng.integers(len(self.ops)))]
    return Example(prompt=f"{a}{op}{b}=", answer=str(_OPS[op](a, b)))

  def split_key(self, example: Example) -> str:
    return example.prompt

  def verify(self, example: Example, completion: str) -> float:
    return float(completion.strip() == example.answer)

  def answer_key(self, example: Example, completion: str, mode: str) -> str | int | None:
    """The stripped integer as written (exact_string) or its value; None if not an integer."""
    del example
    check_answer_key_mode(mode)
    text = completion.strip()
    if _INTEGER.fullmatch(text) is None:
      return None
    return text if mode == "exact_string" else int(text)

  def demonstration(self, example: Example, rng: np.random.Generator) -> str:
    return example.answer
