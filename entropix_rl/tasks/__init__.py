"""Verifiable tasks: generated ones (no download) and math answers for local datasets."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from entropix_rl.tasks.arithmetic import Arithmetic
from entropix_rl.tasks.base import ANSWER_KEY_MODES, Example, GeneratedTask, Task
from entropix_rl.tasks.countdown import Countdown
from entropix_rl.tasks.decomposition import Decomposition
from entropix_rl.tasks.math_reward import MathTask, last_boxed

TASKS = {
    "arithmetic": Arithmetic,
    "countdown": Countdown,
    "decomposition": Decomposition,
    "math": MathTask,
}


def get_task(name: str, **kwargs) -> Task:
  """The task registered as `name`, built with `kwargs` (its dataclass fields)."""
  if name not in TASKS:
    raise ValueError(f"task.name={name!r}; allowed: {tuple(TASKS)}")
  try:
    return TASKS[name](**kwargs)
  except TypeError as err:
    raise ValueError(f"task.kwargs {sorted(kwargs)} do not fit task {name!r}: {err}") from None


def distinct_correct_counts(
    texts: Sequence[str], rewards: np.ndarray, group_ids: np.ndarray
) -> np.ndarray:
  """`[groups]` int64: distinct correct completions (stripped text) of each group, in order of
  the groups' first appearance."""
  groups: dict[int, set[str]] = {int(g): set() for g in np.asarray(group_ids)}
  for text, reward, group in zip(texts, np.asarray(rewards), np.asarray(group_ids)):
    if reward >= 1.0:
      groups[int(group)].add(text.strip())
  return np.asarray([len(s) for s in groups.values()], np.int64)


def distinct_correct_per_group(
    texts: Sequence[str], rewards: np.ndarray, group_ids: np.ndarray
) -> float:
  """Mean over groups of the number of distinct correct completions (stripped text)."""
  counts = distinct_correct_counts(texts, rewards, group_ids)
  return float(np.mean(counts)) if counts.size else 0.0


def answer_clusters(keys: Sequence[Hashable | None], group_ids: np.ndarray) -> np.ndarray:
  """Answer cluster ids within each group: responses of a group with equal keys share an id,
  numbered 0, 1, ... in order of first appearance; a None key (no answer) gets −1.

  Args:
    keys: one answer key per response (`Task.answer_key`).
    group_ids: `[N]` the prompt group of each response.

  Returns:
    `[N]` int32 (`TokenBatch.cluster_ids`).
  """
  seen: dict[int, dict[Hashable, int]] = {}
  ids = np.full(len(keys), -1, np.int32)
  for i, (key, group) in enumerate(zip(keys, np.asarray(group_ids))):
    if key is not None:
      clusters = seen.setdefault(int(group), {})
      ids[i] = clusters.setdefault(key, len(clusters))
  return ids


__all__ = [
    "ANSWER_KEY_MODES",
    "TASKS",
    "Arithmetic",
    "Countdown",
    "Decomposition",
    "Example",
    "GeneratedTask",
    "MathTask",
    "Task",
    "answer_clusters",
    "distinct_correct_counts",
    "distinct_correct_per_group",
    "get_task",
    "last_boxed",
]
