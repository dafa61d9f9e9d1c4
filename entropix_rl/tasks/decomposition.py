"""Sum decomposition: `n=` -> any `a+b` with positive a, b and a + b = n (many correct answers)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from entropix_rl.tasks.base import Example, GeneratedTask

_ANSWER = re.compile(r"([1-9][0-9]*)\+([1-9][0-9]*)")


@dataclasses.dataclass(frozen=True)
class Decomposition(GeneratedTask):
  """Write n as a sum of two positive integers. Prompt `123=`, a correct completion `100+23`.

  Every n in [min_n, max_n] has n - 1 correct answers, so a policy that keeps its entropy keeps
  producing different correct answers (counted by `distinct_correct_per_group`).

  Attributes:
    min_n, max_n: range of n (inclusive); min_n >= 2.
  """

  name = "decomposition"
  min_n: int = 100
  max_n: int = 999

  def __post_init__(self):
    super().__post_init__()
    if not 2 <= self.min_n <= self.max_n:
      raise ValueError(f"decomposition: need 2 <= min_n <= max_n; got min_n={self.min_n}, "
                       f"max_n={self.max_n}")

  @property
  def alphabet(self) -> str:
    return "0123456789+="

  def _draw(self, rng: np.random.Generator) -> Example:
    n = int(rng.integers(self.min_n, self.max_n + 1))
    return Example(prompt=f"{n}=", answer=f"{n // 2}+{n - n // 2}", info={"n": n})

  def split_key(self, example: Example) -> str:
    return str(example.info["n"])

  def verify(self, example: Example, completion: str) -> float:
    match = _ANSWER.fullmatch(completion.strip())
    if match is None:
      return 0.0
    return float(int(match.group(1)) + int(match.group(2)) == example.info["n"])

  def demonstration(self, example: Example, rng: np.random.Generator) -> str:
    n = example.info["n"]
    a = int(rng.integers(1, n))
    return f"{a}+{n - a}"
