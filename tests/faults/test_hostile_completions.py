"""Every shipped verifier against hostile model output: reward 0, bounded time, never executed.

Each hostile completion is built around a wrong answer (or, for the look-alikes, the correct
answer written with characters that are not the task's digits), so none is a correct answer.
Run with `-s` to see the count and the longest call.
"""

import threading
import time

import numpy as np
import pytest

from entropix_rl import tasks
from entropix_rl.tasks import math_reward
from entropix_rl.tasks.base import ANSWER_KEY_MODES, Example

TOY_BOUND_S = 1.0  # per call, on a loaded 2-core machine
MATH_BOUND_S = 10.0  # per call: math-verify's 5 s timeout, plus margin
_FULLWIDTH = {ord(d): chr(0xFF10 + int(d)) for d in "0123456789"}
# Letters that look like digits and operators (Cyrillic О, І, З, Ч, б, В; others).
_LOOKALIKES = str.maketrans(dict(zip("0123456789+*-", "ОІᒿЗЧƼбꞀВԳᐩ∗‐")))


def _hostile(wrap, correct: str, wrong: str, marker: str) -> dict[str, str]:
  """Hostile completions by kind; `wrap` puts an answer where the task looks for it."""
  depth = 10_000
  code = f"__import__('os').system('touch {marker}')"
  return {
      "power_tower_python": wrap("9**9**9**9"),
      "power_tower_latex": wrap("9^{9^{9^{9}}}"),
      "power_tower_deep": wrap("x^{" * 1000 + "x" + "}" * 1000),
      "power_negative_exponent": wrap("2^-9^9"),
      "huge_integer": wrap("1" + "0" * 100_000),
      "huge_product": wrap("9" * 30 + "*" + "9" * 30),
      "deep_frac": wrap("\\frac{" * depth + wrong + "}{2}" * depth),
      "deep_parens": wrap("(" * 100_000 + wrong + ")" * 100_000),
      "one_megabyte": "a" * 1_000_000 + wrap(wrong),
      "one_megabyte_answer": wrap("7" * 1_000_000),
      "underbrace_bomb": wrap("\\underbrace{" * 500 + wrong + "}_{x}" * 500),
      "sum_huge_range": wrap("\\sum_{k=1}^{10^{100}} k"),
      "prod_huge_range": wrap("\\prod_{k=1}^{1000000} k"),
      "factorial": wrap("1000000!"),
      "factorial_of_power": wrap("(10^{9})!"),
      "power_then_factorial": wrap("10^{10000}!"),
      "binomial": wrap("\\binom{10^{9}}{5 \\cdot 10^{8}}"),
      "fullwidth_digits": wrap(correct.translate(_FULLWIDTH)),
      "letter_lookalikes": wrap(correct.translate(_LOOKALIKES)),
      "zero_width_joiner": wrap(correct[:1] + "\u200d" + correct[1:]),
      "rtl_marks": wrap("\u202e" + correct + "\u202c"),
      "unbalanced_open": wrap("{" * 1000 + wrong),
      "unbalanced_close": "}" * 1000 + wrap(wrong) + "}" * 1000,
      "unclosed_boxed": "\\boxed{" + wrong,
      "nul_bytes": wrap(wrong + "\x00" + "\x00" * 10),
      "lone_surrogates": wrap("\ud800" + wrong + "\udfff"),
      "python_code": wrap(code),
      "python_code_plain": code,
      "python_eval": wrap(f'eval("{code}")'),
      "empty": "",
      "whitespace": " \n\t " * 1000,
  }


def _cases(marker: str):
  """(task, example, correct completion, hostile completions) for every registered task."""
  rng = np.random.default_rng(0)
  out = []
  for name, cls in tasks.TASKS.items():
    if name == "math":
      task = cls()
      example = Example(prompt="What is 3 + 7?", answer="10", index=0)
      wrap = lambda x: f"The answer is \\boxed{{{x}}}."
      correct, wrong = "10", "13"
    else:
      task = cls()
      example = task.example(0, "train", 0)
      wrap = lambda x: x
      correct = task.demonstration(example, rng)
      wrong = "1+1" if name != "arithmetic" else str(int(example.answer) + 1)
    out.append((name, task, example, wrap(correct), _hostile(wrap, correct, wrong, marker)))
  return out


def _timed(fn, *args):
  start = time.perf_counter()
  result = fn(*args)
  return result, time.perf_counter() - start


def test_hostile_completions_score_zero_fast_and_never_run(tmp_path):
  marker = tmp_path / "pwned"
  cases = _cases(str(marker))
  assert sorted(name for name, *_ in cases) == sorted(tasks.TASKS)  # every shipped verifier
  longest = {name: (0.0, "") for name, *_ in cases}
  calls = 0
  for name, task, example, correct, hostile in cases:
    assert task.verify(example, correct) == 1.0, name  # the examples are real
    bound = MATH_BOUND_S if name == "math" else TOY_BOUND_S
    for kind, completion in hostile.items():
      reward, seconds = _timed(task.verify, example, completion)
      assert reward == 0.0, (name, kind)
      times = [seconds]
      for mode in ANSWER_KEY_MODES:
        key, seconds = _timed(task.answer_key, example, completion, mode)
        times.append(seconds)
        assert key is None or len(str(key)) <= math_reward.MAX_ANSWER_CHARS, (name, kind, mode)
      calls += len(times)
      assert max(times) < bound, (name, kind, times)
      if max(times) > longest[name][0]:
        longest[name] = (max(times), kind)
  assert not marker.exists()
  kinds = len(next(iter(cases))[4])
  print(
      f"\n{kinds} hostile completions x {len(cases)} tasks x (verify + "
      f"{len(ANSWER_KEY_MODES)} answer_key modes) = {calls} calls; longest per task: "
      + ", ".join(f"{name} {s * 1e3:.2f} ms ({kind})" for name, (s, kind) in longest.items())
  )


def test_math_verifier_works_off_the_main_thread():
  """math-verify's SIGALRM timeouts raise off the main thread; the task must not, and its
  budget must still bound hostile answers there."""
  task = tasks.MathTask()
  example = Example(prompt="half of one?", answer="\\frac{1}{2}")
  completions = [
      "so \\boxed{0.5}",
      "\\boxed{9^{9^{9^{9}}}}",
      "\\boxed{(10^{9})!}",
      "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
  ]
  results = {}

  def score():
    for text in completions:
      results[text] = _timed(task.verify, example, text)
    results["key"] = task.answer_key(example, "\\boxed{\\frac{2}{4}}", "value")

  worker = threading.Thread(target=score)
  worker.start()
  worker.join(timeout=60)
  assert not worker.is_alive()
  assert [results[text][0] for text in completions] == [1.0, 0.0, 0.0, 0.0]
  longest = max(seconds for _, seconds in (results[text] for text in completions))
  assert longest < MATH_BOUND_S
  print(f"\nmath off the main thread: longest verify {longest * 1e3:.2f} ms")
  assert results["key"] == "1/2"


@pytest.mark.parametrize(
    "answer",
    [
        "\\frac{1}{2}",
        "2^{10}",
        "\\sqrt{3}",
        "x^2+y^2",
        "1,\\!000",
        "5!",
        "\\binom{10}{3}",
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        "(-\\infty, 3]",
        "90^\\circ",
        "10^{-3}",
        "\\pi",
        "e^{i\\pi}",
        "(n+1)!",
        "2^{100 \\cdot 100}",
    ],
)
def test_budget_accepts_ordinary_answers(answer):
  assert math_reward.within_budget(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "9^{9^{9}}",
        "9**9**9",
        "2^{10001}",
        "2^{100 \\cdot 101}",
        "10^{10000}!",
        "10001!",
        "9!!",
        "(10^{9})!",
        "2^-9^9",
        "2^{-(9^{9})}",
        "\\binom{10^{9}}{3}",
        "\\Gamma(100000)",
        "1" * 257,
        "(" * 13 + "1" + ")" * 13,
        "1\u200d2",
        "\u202e12",
        "１２",
        "1\x002",
        "\ud800",
    ],
)
def test_budget_refuses_hostile_answers(answer):
  assert not math_reward.within_budget(answer)


def test_correct_math_answers_still_score():
  task = tasks.MathTask()
  for answer, boxed in [
      ("0.5", "\\frac{1}{2}"),
      ("1024", "2^{10}"),
      ("120", "5!"),
      ("120", "\\binom{10}{3}"),
  ]:
    assert task.verify(Example(prompt="", answer=answer), f"\\boxed{{{boxed}}}") == 1.0, boxed
  assert task.verify(Example(prompt="", answer="13"), "\\boxed{12}") == 0.0
