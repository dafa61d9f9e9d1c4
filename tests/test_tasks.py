"""Verifiable tasks: deterministic disjoint splits, verifiers, demonstrations and the registry."""

import numpy as np
import pytest

from entropix_rl import tasks
from entropix_rl.tasks import countdown as countdown_lib
from entropix_rl.tasks.base import Example

GENERATED = {
    "decomposition": tasks.Decomposition(),
    "countdown": tasks.Countdown(),
    "arithmetic": tasks.Arithmetic(ops="+-*"),
}
NUM_SPLIT_DRAWS = 500


@pytest.fixture(params=sorted(GENERATED))
def task(request):
  return GENERATED[request.param]


def _examples(task, seed, split, count):
  return [task.example(seed, split, i) for i in range(count)]


# ---------------------------------------------------------------- generated tasks (shared)


def test_example_is_deterministic(task):
  for i in (0, 1, 7, 123):
    assert task.example(3, "train", i) == task.example(3, "train", i)
    assert task.example(3, "eval", i) == task.example(3, "eval", i)
  first = [ex.prompt for ex in _examples(task, 0, "train", 30)]
  again = [ex.prompt for ex in _examples(task, 0, "train", 30)]
  other = [ex.prompt for ex in _examples(task, 1, "train", 30)]
  assert first == again
  assert first != other
  assert [ex.index for ex in _examples(task, 0, "eval", 5)] == list(range(5))


def test_train_and_eval_problems_are_disjoint(task):
  train = _examples(task, 0, "train", NUM_SPLIT_DRAWS)
  evals = _examples(task, 0, "eval", NUM_SPLIT_DRAWS)
  assert all(task.split_of(ex) == "train" for ex in train)
  assert all(task.split_of(ex) == "eval" for ex in evals)
  train_keys = {task.split_key(ex) for ex in train}
  eval_keys = {task.split_key(ex) for ex in evals}
  assert len(train_keys) > 50 and len(eval_keys) > 20
  assert not train_keys & eval_keys
  # A different seed draws from the same partition.
  other_eval = {task.split_key(ex) for ex in _examples(task, 5, "eval", 100)}
  assert not train_keys & other_eval


def test_demonstrations_verify(task):
  rng = np.random.default_rng(0)
  for split in ("train", "eval"):
    for ex in _examples(task, 2, split, 200):
      demo = task.demonstration(ex, rng)
      assert task.verify(ex, demo) == 1.0, (ex, demo)
      assert task.verify(ex, f"  {demo}\n") == 1.0  # surrounding whitespace is ignored
      assert task.verify(ex, ex.answer) == 1.0, ex


def test_malformed_completions_score_zero(task):
  rng = np.random.default_rng(1)
  for ex in _examples(task, 4, "train", 50):
    demo = task.demonstration(ex, rng)
    for bad in (
        "",
        "   ",
        "hello",
        "???",
        demo + "x",
        demo + "=",
        "x" + demo,
        demo + demo,
        demo + " 1",
        "9" + demo,
    ):
      assert task.verify(ex, bad) == 0.0, (ex, bad)


def test_alphabet_covers_prompts_and_demonstrations(task):
  rng = np.random.default_rng(2)
  alphabet = set(task.alphabet)
  assert len(alphabet) == len(task.alphabet)
  for split in ("train", "eval"):
    for ex in _examples(task, 6, split, 200):
      assert set(ex.prompt) <= alphabet, ex.prompt
      demo = task.demonstration(ex, rng)
      assert set(demo) <= alphabet, demo


def test_bad_split_seed_and_eval_fraction(task):
  with pytest.raises(ValueError, match="split"):
    task.example(0, "test", 0)
  with pytest.raises(ValueError, match="must be >= 0"):
    task.example(-1, "train", 0)
  with pytest.raises(ValueError, match="must be >= 0"):
    task.example(0, "train", -1)
  with pytest.raises(ValueError, match="eval_fraction"):
    type(task)(eval_fraction=0.0)
  with pytest.raises(ValueError, match="eval_fraction"):
    type(task)(eval_fraction=1.0)


# ---------------------------------------------------------------- decomposition


def _decomposition_example(n):
  return Example(prompt=f"{n}=", answer=f"{n // 2}+{n - n // 2}", info={"n": n})


def test_decomposition_accepts_many_correct_answers():
  task = tasks.Decomposition()
  ex = _decomposition_example(865)
  for good in (
      "1+864",
      "864+1",
      "432+433",
      "800+65",
      "065+800",
      "0001+0864",
      "400+465",
      " 500+365 ",
  ):
    assert task.verify(ex, good) == 1.0, good


def test_decomposition_rejects_wrong_sums_and_zero_parts():
  task = tasks.Decomposition()
  ex = _decomposition_example(865)
  for bad in (
      "1+863",
      "865+1",
      "0+865",
      "865+0",
      "000+865",
      "865+000",
      "0+0",
      "865",
      "+865",
      "1+",
      "-1+866",
      "1+2+862",
      "1 + 864",
      "1+864+",
      "a+b",
      "1*865",
      "432.5+432.5",
  ):
    assert task.verify(ex, bad) == 0.0, bad


def test_decomposition_demonstrations_are_diverse():
  task = tasks.Decomposition()
  ex = _decomposition_example(865)
  rng = np.random.default_rng(0)
  demos = [task.demonstration(ex, rng) for _ in range(50)]
  assert all(task.verify(ex, d) == 1.0 for d in demos)
  assert len(set(demos)) >= 5
  # A number with no borrow-free split into positive parts still gets a correct demonstration.
  for n in (100, 2, 10, 1000):
    ex = _decomposition_example(n)
    assert all(task.verify(ex, task.demonstration(ex, rng)) == 1.0 for _ in range(10))


def test_decomposition_config_validation():
  with pytest.raises(ValueError, match="min_n"):
    tasks.Decomposition(min_n=1)
  with pytest.raises(ValueError, match="max_n"):
    tasks.Decomposition(min_n=50, max_n=10)


# ---------------------------------------------------------------- countdown


def _countdown_example(numbers, target):
  return Example(
      prompt=f"{target}:{','.join(map(str, numbers))}=",
      answer="",
      info={"numbers": tuple(numbers), "target": target},
  )


def test_countdown_verify_rules():
  task = tasks.Countdown()
  ex = _countdown_example((3, 5, 7), 22)
  for good in ("3*5+7", "7+5*3", "(3*5)+7", "((3*5)+7)", "7+(5*3)", " 3 * 5 + 7 "):
    assert task.verify(ex, good) == 1.0, good
  for bad in (
      "3*5+7+0",
      "3*5*7",
      "3*5+5",
      "3*7+5",
      "5*5+7-3",
      "3*5",
      "22",
      "3*5+7=22",
      "(3*5+7",
      "3*5+7)",
      "3**5+7",
      "-3*5+7",
      "3*5+7.0",
      "3,5,7",
  ):
    assert task.verify(ex, bad) == 0.0, bad


def test_countdown_rejects_reused_and_missing_numbers():
  task = tasks.Countdown()
  ex = _countdown_example((2, 3, 4), 10)
  assert task.verify(ex, "2*3+4") == 1.0
  assert task.verify(ex, "3+3+4") == 0.0  # 3 twice, 2 missing, value 10
  assert task.verify(ex, "2*4+2") == 0.0  # 2 twice, 3 missing, value 10
  assert task.verify(ex, "6+4") == 0.0  # 2 and 3 missing
  assert task.verify(ex, "2*3+4+0") == 0.0  # an extra number
  assert task.verify(ex, "2+3+4") == 0.0  # wrong target
  # The same number given twice must be used twice.
  twice = _countdown_example((3, 3, 4), 10)
  assert task.verify(twice, "3+3+4") == 1.0
  assert task.verify(twice, "6+4") == 0.0


def test_countdown_division_and_fractions():
  task = tasks.Countdown()
  assert task.verify(_countdown_example((5, 3, 3), 5), "5/(3-3)") == 0.0
  assert task.verify(_countdown_example((5, 3, 3), 0), "5*(3-3)") == 1.0
  # Exact fractions: (1/3)*3 is 1, not 0.999...
  assert task.verify(_countdown_example((1, 3, 3), 1), "1/3*3") == 1.0
  assert task.verify(_countdown_example((1, 3, 3), 1), "(1/3)*3") == 1.0
  assert task.verify(_countdown_example((7, 2), 3), "7/2") == 0.0


def test_countdown_never_executes_model_output(monkeypatch):
  task = tasks.Countdown()
  ex = _countdown_example((3, 5, 7), 22)
  import builtins

  def forbidden(*args, **kwargs):
    raise AssertionError("model output must not be executed")

  monkeypatch.setattr(builtins, "eval", forbidden)
  monkeypatch.setattr(builtins, "exec", forbidden)
  for hostile in (
      "__import__('os').system('x')",
      "3*5+7;__import__('os')",
      "(lambda: 22)()",
      "3*5+7 # comment",
      "0x16",
      "1e1+12",
      "3*5+7\n__import__('os')",
  ):
    assert task.verify(ex, hostile) == 0.0, hostile
    with pytest.raises(ValueError):
      countdown_lib.evaluate(hostile)
  # Completions longer than 64 characters are rejected outright.
  assert task.verify(ex, "(" * 40 + "3*5+7" + ")" * 40) == 0.0


def test_countdown_evaluate():
  value, used = countdown_lib.evaluate("(12-4)/(1+1)*3")
  assert value == 12 and used == [12, 4, 1, 1, 3]
  value, _ = countdown_lib.evaluate("10-2-3")  # left associative
  assert value == 5
  value, _ = countdown_lib.evaluate("12/2/3")
  assert value == 2


def test_countdown_solutions_all_verify():
  task = tasks.Countdown()
  cases = [((3, 5, 7), 22), ((2, 3, 4), 10), ((1, 2, 3, 4), 24), ((6, 6), 1), ((4, 7), 28)]
  for numbers, target in cases:
    found = countdown_lib.solutions(numbers, target)
    assert found, (numbers, target)
    assert len(set(found)) == len(found)
    ex = _countdown_example(numbers, target)
    for text in found:
      assert task.verify(ex, text) == 1.0, (numbers, target, text)
  assert countdown_lib.solutions((1, 1), 100) == ()
  assert len(countdown_lib.solutions((1, 2, 3, 4), 24)) > 5


def test_countdown_examples_are_well_formed():
  task = tasks.Countdown(num_numbers=4, max_number=12, max_target=50)
  for ex in _examples(task, 0, "train", 50):
    numbers, target = ex.info["numbers"], ex.info["target"]
    assert len(numbers) == 4 and all(1 <= x <= 12 for x in numbers)
    assert 1 <= target <= 50
    assert ex.prompt == f"{target}:{','.join(map(str, numbers))}="


def test_countdown_config_validation():
  with pytest.raises(ValueError, match="num_numbers"):
    tasks.Countdown(num_numbers=5)
  with pytest.raises(ValueError, match="max_number"):
    tasks.Countdown(max_number=1)


# ---------------------------------------------------------------- arithmetic


def test_arithmetic_exact_answer_only():
  task = tasks.Arithmetic(ops="+-*")
  ex = Example(prompt="123+456=", answer="579")
  assert task.verify(ex, "579") == 1.0
  assert task.verify(ex, " 579\n") == 1.0
  for bad in ("578", "0579", "579.0", "+579", "5 79", "579=", "123+456", "579579", ""):
    assert task.verify(ex, bad) == 0.0, bad
  for ex in _examples(task, 0, "train", 100):
    a, op, b = ex.prompt[:-1].partition(next(c for c in ex.prompt[1:] if c in "+-*"))
    expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert ex.answer == str(expected)


def test_arithmetic_validation_names_the_field():
  with pytest.raises(ValueError, match="ops"):
    tasks.Arithmetic(ops="/")
  with pytest.raises(ValueError, match="ops"):
    tasks.Arithmetic(ops="")
  with pytest.raises(ValueError, match="ops"):
    tasks.Arithmetic(ops="+x")
  with pytest.raises(ValueError, match="digits"):
    tasks.Arithmetic(digits=0)


def test_arithmetic_digits():
  task = tasks.Arithmetic(digits=2, ops="+")
  for ex in _examples(task, 0, "train", 50):
    a, b = ex.prompt[:-1].split("+")
    assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99
  one = tasks.Arithmetic(digits=1, ops="*", eval_fraction=0.3)
  for ex in _examples(one, 0, "eval", 20):
    a, b = ex.prompt[:-1].split("*")
    assert 0 <= int(a) <= 9 and 0 <= int(b) <= 9


# ---------------------------------------------------------------- math


def test_last_boxed():
  assert tasks.last_boxed(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
  assert tasks.last_boxed(r"\boxed{1} then \boxed{2}") == "2"
  assert tasks.last_boxed(r"\boxed{{a}{b}}") == "{a}{b}"
  assert tasks.last_boxed(r"\fbox{7}") == "7"
  assert tasks.last_boxed(r"\boxed{1} and \fbox{3}") == "3"
  assert tasks.last_boxed("the answer is 5") is None
  assert tasks.last_boxed("") is None
  assert tasks.last_boxed(r"\boxed{\frac{1}{2}") is None  # unbalanced


def test_math_verify():
  task = tasks.MathTask()
  ex = Example(prompt="What is 1/2?", answer=r"\frac{1}{2}")
  assert task.verify(ex, r"The answer is \boxed{0.5}") == 1.0
  assert task.verify(ex, r"The answer is \boxed{\frac{1}{2}}") == 1.0
  assert task.verify(ex, r"\boxed{0.6}") == 0.0
  assert task.verify(ex, "The answer is 0.5") == 0.0
  assert task.verify(ex, "") == 0.0
  assert task.verify(ex, task.demonstration(ex, np.random.default_rng(0))) == 1.0
  assert task.verify(Example(prompt="", answer="3"), r"first \boxed{2}, finally \boxed{3}") == 1.0


def test_math_alphabet_needs_a_tokenizer():
  with pytest.raises(ValueError, match="tokenizer"):
    _ = tasks.MathTask().alphabet


# ---------------------------------------------------------------- registry and metrics


def test_get_task():
  task = tasks.get_task("decomposition", min_n=10, max_n=99)
  assert isinstance(task, tasks.Decomposition) and task.max_n == 99
  assert isinstance(tasks.get_task("math"), tasks.MathTask)
  for name in tasks.TASKS:
    built = tasks.get_task(name)
    assert built.name == name and callable(built.verify) and callable(built.demonstration)
  for task in GENERATED.values():
    assert isinstance(task, tasks.Task)
  with pytest.raises(ValueError, match="allowed") as err:
    tasks.get_task("sudoku")
  for name in tasks.TASKS:
    assert name in str(err.value)
  with pytest.raises(ValueError, match="kwargs") as err:
    tasks.get_task("countdown", bogus=1)
  assert "bogus" in str(err.value)
  with pytest.raises(ValueError, match="num_numbers"):
    tasks.get_task("countdown", num_numbers=9)


def test_distinct_correct_per_group():
  texts = ["1+2", " 1+2 ", "2+1", "0+3", "a", "b", "b", "c"]
  rewards = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.5])
  group_ids = np.array([0, 0, 0, 0, 1, 1, 1, 2])
  # group 0: {"1+2", "2+1"}, group 1: {"a", "b"}, group 2: none -> mean(2, 2, 0).
  assert tasks.distinct_correct_per_group(texts, rewards, group_ids) == pytest.approx(4 / 3)
  assert tasks.distinct_correct_per_group([], np.zeros(0), np.zeros(0, np.int32)) == 0.0
