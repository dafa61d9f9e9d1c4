"""Math answers for real datasets, checked with math-verify.

The last `\\boxed{...}` of a completion is extracted and compared with the ground truth by
`math_verify` (symbolic equivalence through sympy, never `eval`). Every parse and verify call
carries a timeout (`timeout_s`; math-verify implements it with SIGALRM, so it applies on the
main thread, where the trainer scores).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from entropix_rl.tasks.base import Example, check_answer_key_mode


def last_boxed(text: str) -> str | None:
  """The contents of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced."""
  starts = [i for key in ("\\boxed{", "\\fbox{") for i in [text.rfind(key)] if i >= 0]
  if not starts:
    return None
  start = max(starts)
  i = text.index("{", start) + 1
  depth, begin = 1, i
  while i < len(text):
    depth += {"{": 1, "}": -1}.get(text[i], 0)
    if depth == 0:
      return text[begin:i]
    i += 1
  return None


@dataclasses.dataclass(frozen=True)
class MathTask:
  """Reward 1 when the completion's last boxed answer equals the ground truth.

  Attributes:
    timeout_s: seconds allowed for each math-verify parse or verify call.
  """

  name = "math"
  timeout_s: int = 5

  @property
  def alphabet(self) -> str:
    raise ValueError("task 'math' needs a real tokenizer: set tokenizer.kind='hf' and "
                     "tokenizer.path")

  def verify(self, example: Example, completion: str) -> float:
    import math_verify  # heavy import (sympy), only when used

    answer = last_boxed(completion)
    if answer is None:
      return 0.0
    gold = math_verify.parse(f"\\boxed{{{example.answer}}}", parsing_timeout=self.timeout_s)
    pred = math_verify.parse(f"\\boxed{{{answer}}}", parsing_timeout=self.timeout_s)
    if not gold or not pred:
      return 0.0
    return float(math_verify.verify(gold, pred, timeout_seconds=self.timeout_s))

  def answer_key(self, example: Example, completion: str, mode: str) -> str | None:
    """The last boxed answer, stripped (exact_string), or math-verify's parse of it as text
    (value: `\\frac{1}{2}` and `0.5` both give `1/2`); None without a (parseable) answer."""
    del example
    check_answer_key_mode(mode)
    answer = (last_boxed(completion) or "").strip()
    if not answer or mode == "exact_string":
      return answer or None
    import math_verify  # heavy import (sympy), only when used

    parsed = math_verify.parse(f"\\boxed{{{answer}}}", parsing_timeout=self.timeout_s)
    return str(parsed[0]) if parsed else None

  def demonstration(self, example: Example, rng: np.random.Generator) -> str:
    return f"The answer is \\boxed{{{example.answer}}}."
