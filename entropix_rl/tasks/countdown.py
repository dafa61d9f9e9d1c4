"""Countdown: reach a target with each given number used exactly once and + - * / ( ).

Prompt `22:3,5,7=`, a correct completion `3*5+7`. The verifier parses the expression with a
small recursive-descent parser over exact fractions; model output is never executed. Only
completions of at most 64 characters are parsed, which bounds the parser's recursion depth and
the size of every number; digits are ASCII (a fullwidth `３*５+７` is malformed).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
import functools
import itertools
import re

import numpy as np

from entropix_rl.tasks.base import Example, GeneratedTask, check_answer_key_mode

_TOKEN = re.compile(r"\s*(\d+|[-+*/()])", re.ASCII)  # ASCII digits only, as the alphabet
_BINARY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b != 0 else None,
}


class _Parser:
  """expr := term (('+'|'-') term)* ; term := atom (('*'|'/') atom)* ; atom := int | '(' expr ')'."""

  def __init__(self, text: str):
    self.tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
      match = _TOKEN.match(text, pos)
      if match is None:
        raise ValueError(f"unexpected character at {pos}")
      self.tokens.append(match.group(1))
      pos = match.end()
    self.pos = 0
    self.numbers: list[int] = []

  def _peek(self) -> str | None:
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def _next(self) -> str:
    token = self._peek()
    if token is None:
      raise ValueError("unexpected end of expression")
    self.pos += 1
    return token

  def parse(self) -> Fraction:
    value = self._expr()
    if self._peek() is not None:
      raise ValueError(f"trailing token {self._peek()!r}")
    return value

  def _combine(self, ops: str, operand) -> Fraction:
    value = operand()
    while self._peek() in tuple(ops):
      op = self._next()
      right = operand()
      value = _BINARY[op](value, right)
      if value is None:
        raise ValueError("division by zero")
    return value

  def _expr(self) -> Fraction:
    return self._combine("+-", self._term)

  def _term(self) -> Fraction:
    return self._combine("*/", self._atom)

  def _atom(self) -> Fraction:
    token = self._next()
    if token == "(":
      value = self._expr()
      if self._next() != ")":
        raise ValueError("expected ')'")
      return value
    if not token.isdigit():
      raise ValueError(f"expected a number, got {token!r}")
    self.numbers.append(int(token))
    return Fraction(int(token))


def evaluate(expression: str) -> tuple[Fraction, list[int]]:
  """The exact value of an arithmetic expression and the numbers it uses (ValueError if malformed)."""
  parser = _Parser(expression)
  return parser.parse(), parser.numbers


@functools.lru_cache(maxsize=4096)
def solutions(numbers: tuple[int, ...], target: int) -> tuple[str, ...]:
  """Every expression (up to parenthesisation of each binary tree) using all numbers once."""

  def build(items: tuple[tuple[Fraction, str], ...]):
    if len(items) == 1:
      yield items[0]
      return
    for split in range(1, len(items)):
      for left in build(items[:split]):
        for right in build(items[split:]):
          for op, fn in _BINARY.items():
            value = fn(left[0], right[0])
            if value is not None:
              yield value, f"({left[1]}{op}{right[1]})"

  found = set()
  for perm in set(itertools.permutations(numbers)):
    for value, text in build(tuple((Fraction(n), str(n)) for n in perm)):
      if value == target:
        found.add(text[1:-1] if len(numbers) > 1 else text)
  return tuple(sorted(found))


def _parse(completion: str) -> tuple[Fraction, list[int]] | None:
  """`evaluate` of the stripped completion, or None if it is empty, over 64 characters or
  malformed."""
  text = completion.strip()
  if not text or len(text) > 64:
    return None
  try:
    return evaluate(text)
  except ValueError:
    return None


@dataclasses.dataclass(frozen=True)
class Countdown(GeneratedTask):
  """Reach `target` using every number exactly once.

  Attributes:
    num_numbers: how many numbers are given (2-4).
    max_number: numbers are drawn from [1, max_number].
    max_target: targets are positive integers <= max_target.
  """

  name = "countdown"
  file_fields = ("numbers", "target")
  num_numbers: int = 3
  max_number: int = 20
  max_target: int = 100

  def __post_init__(self):
    super().__post_init__()
    if not 2 <= self.num_numbers <= 4:
      raise ValueError(f"countdown: num_numbers={self.num_numbers}; allowed: 2, 3 or 4")
    if self.max_number < 2 or self.max_target < 1:
      raise ValueError(
          f"countdown: max_number={self.max_number} must be >= 2 and "
          f"max_target={self.max_target} >= 1"
      )

  @property
  def alphabet(self) -> str:
    return "0123456789+-*/(),:="

  def _draw(self, rng: np.random.Generator) -> Example:
    while True:
      numbers = tuple(int(x) for x in rng.integers(1, self.max_number + 1, self.num_numbers))
      order = rng.permutation(self.num_numbers)
      text = str(numbers[order[0]])
      for i in order[1:]:
        text += "+-*/"[int(rng.integers(4))] + str(numbers[i])
      try:
        value, _ = evaluate(text)
      except ValueError:
        continue
      if value.denominator == 1 and 1 <= value <= self.max_target:
        target = int(value)
        prompt = f"{target}:{','.join(map(str, numbers))}="
        return Example(prompt=prompt, answer=text, info={"numbers": numbers, "target": target})

  def split_key(self, example: Example) -> str:
    return f"{example.info['target']}:{sorted(example.info['numbers'])}"

  def verify(self, example: Example, completion: str) -> float:
    parsed = _parse(completion)
    if parsed is None:
      return 0.0
    value, used = parsed
    return float(
        sorted(used) == sorted(example.info["numbers"]) and value == example.info["target"]
    )

  def answer_key(self, example: Example, completion: str, mode: str) -> str | Fraction | None:
    """The stripped expression (exact_string) or its exact value (whatever numbers it uses);
    None if it does not parse."""
    del example
    check_answer_key_mode(mode)
    parsed = _parse(completion)
    if parsed is None:
      return None
    return completion.strip() if mode == "exact_string" else parsed[0]

  def demonstration(self, example: Example, rng: np.random.Generator) -> str:
    found = solutions(tuple(sorted(example.info["numbers"])), example.info["target"])
    return found[int(rng.integers(len(found)))] if found else example.answer
