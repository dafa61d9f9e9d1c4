"""Sum decomposition: `n=` -> any `a+b` with positive a, b and a + b = n (many correct answers)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from entropix_rl.tasks.base import Example, GeneratedTask, check_answer_key_mode

_ANSWER = re.compile(r"([0-9]{1,12})\+([0-9]{1,12})")


@dataclasses.dataclass(frozen=True)
class Decomposition(GeneratedTask):
  """Write n as a sum of two positive integers. Prompt `123=`, correct completions `100+23`,
  `023+100`, `61+62`, ... (leading zeros allowed; a and b must be >= 1).

  Every n in [min_n, max_n] has n - 1 correct sums, so a policy that keeps its entropy keeps
  producing different correct answers (counted by `distinct_correct_per_group`).
  Demonstrations are borrow-free and zero-padded to n's width (each digit of a drawn uniformly
  in [0, digit of n], b's digit the difference), so a tiny decoder learns them within a few
  hundred SFT steps while they still span prod(digit + 1) answers per n.

  Attributes:
    min_n, max_n: range of n (inclusive); min_n >= 2.
  """

  name = "decomposition"
  file_fields = ("n",)
  min_n: int = 100
  max_n: int = 999

  def __post_init__(self):
    super().__post_init__()
    if not 2 <= self.min_n <= self.max_n:
      raise ValueError(
          f"decomposition: need 2 <= min_n <= max_n; got min_n={self.min_n}, " f"max_n={self.max_n}"
      )

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
    a, b = int(match.group(1)), int(match.group(2))
    return float(a >= 1 and b >= 1 and a + b == example.info["n"])

  def answer_key(self, example: Example, completion: str, mode: str) -> str | int | None:
    """The stripped `a+b` (exact_string) or a + b (value: every correct answer has value n);
    None if the completion is not of the form `a+b`."""
    del example
    check_answer_key_mode(mode)
    text = completion.strip()
    match = _ANSWER.fullmatch(text)
    if match is None:
      return None
    return text if mode == "exact_string" else int(match.group(1)) + int(match.group(2))

  def demonstration(self, example: Example, rng: np.random.Generator) -> str:
    n = example.info["n"]
    digits = [int(d) for d in str(n)]
    for _ in range(32):
      a = int("".join(str(int(rng.integers(0, d + 1))) for d in digits))
      if 0 < a < n:
        break
    else:  # n like 100 has no borrow-free split into two positive parts
      a = int(rng.integers(1, n))
    return f"{a:0{len(digits)}d}+{n - a:0{len(digits)}d}"
