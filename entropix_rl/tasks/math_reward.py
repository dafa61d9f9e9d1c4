"""Math answers for real datasets, checked with math-verify.

The last `\\boxed{...}` of a completion is extracted and compared with the ground truth by
`math_verify` (symbolic equivalence through sympy, never `eval`).

Model output is hostile input: sympy evaluates some short expressions into numbers with
millions of digits (`9^{9^{9}}`, `(10^{9})!`), in C code that no signal interrupts. So a
boxed answer is parsed only if it passes `within_budget`: at most `MAX_ANSWER_CHARS`
characters, brackets nested at most `MAX_NESTING` deep, no control, format (zero-width,
bidi), surrogate or private-use characters and no non-ASCII digits, and no hyper-operation:
no power tower, and no exponent, factorial or binomial whose operands multiply to more than
`MAX_OPERAND`. Any other answer scores 0 and has key None. On top of that, every parse and
verify call carries math-verify's timeout (`timeout_s`), which uses SIGALRM and so only
applies on the main thread (where the trainer scores); elsewhere the budget alone bounds the
work.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import threading
import unicodedata

import numpy as np

from entropix_rl.tasks.base import Example, check_answer_key_mode

MAX_ANSWER_CHARS = 256
"""Longest boxed answer parsed (characters); math answers are far shorter."""
MAX_NESTING = 12
"""Deepest nesting of {}, () and [] in a parsed answer."""
MAX_OPERAND = 10_000
"""Largest product of the integers in an exponent, a factorial's or a binomial's operand
(`2^{10000}` has 3011 digits, `10000!` 35660: sympy builds either in milliseconds)."""
_BAD_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn")
_OPENERS, _CLOSERS = "{([", "})]"
_POWER = re.compile(r"\^|\*\*")
_OPERAND_TOKEN = re.compile(r"\s*(\\?[A-Za-z]+|[0-9.]+)")
_INTEGER = re.compile(r"[0-9]+")
_EAGER_FUNCTIONS = re.compile(r"\\[dt]?binom|\\choose|\\Gamma|factorial")


def last_boxed(text: str, max_len: int | None = None) -> str | None:
  """The contents of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced;
  None if there is none, it is unclosed, or its contents exceed `max_len` characters."""
  starts = [i for key in ("\\boxed{", "\\fbox{") for i in [text.rfind(key)] if i >= 0]
  if not starts:
    return None
  start = max(starts)
  i = text.index("{", start) + 1
  depth, begin = 1, i
  stop = len(text) if max_len is None else min(len(text), begin + max_len + 1)
  while i < stop:
    depth += {"{": 1, "}": -1}.get(text[i], 0)
    if depth == 0:
      return text[begin:i]
    i += 1
  return None


def _nesting(text: str) -> int:
  depth = deepest = 0
  for ch in text:
    depth += (ch in _OPENERS) - (ch in _CLOSERS)
    deepest = max(deepest, depth)
  return deepest


def _group(text: str, i: int, step: int) -> str:
  """The bracketed group starting at `text[i]` (an opener, step 1; a closer, step -1)."""
  depth, j = 0, i
  while 0 <= j < len(text):
    depth += (text[j] in _OPENERS) - (text[j] in _CLOSERS)
    if depth == 0:
      return text[min(i, j) + 1 : max(i, j)]
    j += step
  return text[i + 1 :] if step > 0 else text[:i]


def _small(operand: str) -> bool:
  """Whether `operand` holds no power or factorial and its integers multiply to <= MAX_OPERAND."""
  if _POWER.search(operand) or "!" in operand.replace("\\!", ""):
    return False
  product = 1
  for digits in _INTEGER.findall(operand):
    if len(digits.lstrip("0")) > len(str(MAX_OPERAND)):
      return False
    product *= max(int(digits), 1)
    if product > MAX_OPERAND:
      return False
  return True


def _exponents_small(text: str) -> bool:
  """Every exponent is small and none is followed by another power or a factorial."""
  for match in _POWER.finditer(text):
    i = match.end()
    while i < len(text) and (text[i].isspace() or text[i] in "+-"):
      i += 1
    if i < len(text) and text[i] in _OPENERS:
      operand = _group(text, i, 1)
      end = i + len(operand) + 2
    else:
      token = _OPERAND_TOKEN.match(text, i)
      operand, end = (token.group(1), token.end()) if token else ("", i)
    rest = text[end:].lstrip()
    if not _small(operand) or _POWER.match(rest) or (rest.startswith("!")):
      return False
  return True


def _factorials_small(text: str) -> bool:
  """Every factorial's operand (the integer or group before `!`; not LaTeX's `\\!` space) is
  small."""
  for i, ch in enumerate(text):
    if ch != "!" or (i and text[i - 1] == "\\"):
      continue
    j = i - 1
    while j >= 0 and text[j].isspace():
      j -= 1
    if j >= 0 and text[j] in _CLOSERS:
      operand = _group(text, j, -1)
    else:
      k = j
      while k >= 0 and (text[k].isdigit() or text[k] == "!"):
        k -= 1
      operand = text[k + 1 : j + 1]
    if not _small(operand):
      return False
  return True


def within_budget(answer: str) -> bool:
  """Whether a boxed answer is safe to hand to math-verify (the module docstring's budget)."""
  if len(answer) > MAX_ANSWER_CHARS or _nesting(answer) > MAX_NESTING:
    return False
  if any(
      (unicodedata.category(ch) in _BAD_CATEGORIES and not ch.isspace())
      or (ch.isdecimal() and not ch.isascii())
      for ch in answer
  ):
    return False
  if _EAGER_FUNCTIONS.search(answer) and not _small(answer):
    return False
  return _exponents_small(answer) and _factorials_small(answer)


def _timeout(seconds: int) -> int | None:
  """math-verify's timeout where SIGALRM works (the main thread), else None (no alarm)."""
  alarm = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
  return seconds if alarm else None


@dataclasses.dataclass(frozen=True)
class MathTask:
  """Reward 1 when the completion's last boxed answer equals the ground truth.

  Attributes:
    timeout_s: seconds allowed for each math-verify parse or verify call.
  """

  name = "math"
  file_fields = ()  # the ground truth is the record's answer
  timeout_s: int = 5

  @property
  def alphabet(self) -> str:
    raise ValueError(
        "task 'math' needs a real tokenizer: set tokenizer.kind='hf' and " "tokenizer.path"
    )

  def _answer(self, completion: str) -> str | None:
    """The last boxed answer if it is within budget (`within_budget`), else None."""
    answer = last_boxed(completion, max_len=MAX_ANSWER_CHARS)
    return answer if answer is not None and within_budget(answer) else None

  def verify(self, example: Example, completion: str) -> float:
    import math_verify  # heavy import (sympy), only when used

    answer = self._answer(completion)
    if answer is None:
      return 0.0
    timeout = _timeout(self.timeout_s)
    gold = math_verify.parse(f"\\boxed{{{example.answer}}}", parsing_timeout=timeout)
    pred = math_verify.parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)
    if not gold or not pred:
      return 0.0
    return float(math_verify.verify(gold, pred, timeout_seconds=timeout))

  def answer_key(self, example: Example, completion: str, mode: str) -> str | None:
    """The last boxed answer, stripped (exact_string), or math-verify's parse of it as text
    (value: `\\frac{1}{2}` and `0.5` both give `1/2`); None without a (parseable) answer
    within budget."""
    del example
    check_answer_key_mode(mode)
    answer = (self._answer(completion) or "").strip()
    if not answer or mode == "exact_string":
      return answer or None
    import math_verify  # heavy import (sympy), only when used

    parsed = math_verify.parse(f"\\boxed{{{answer}}}", parsing_timeout=_timeout(self.timeout_s))
    if not parsed:
      return None
    try:
      return str(parsed[0])
    except (ValueError, RecursionError):  # e.g. an integer over Python's 4300-digit str limit
      return answer

  def demonstration(self, example: Example, rng: np.random.Generator) -> str:
    return f"The answer is \\boxed{{{example.answer}}}."
