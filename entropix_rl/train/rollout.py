"""A step's rollout on the host: sample, score, reshape, keep informative groups, assemble.

`collect` samples the step's prompts (`samples_per_prompt` each, at the temperature rollout
interventions choose) with the `Sampler`, which scores them with the task's verifier; hands them
to every active `rollout` intervention in registry order (`interventions.reshape`), each of
which may sample more (`RolloutContext.sample`: branches from prefixes, a second temperature),
replace the training rewards (majority votes, cluster rewards) or choose rows, and must leave
exactly `rl.group_size` rows per prompt; then, with dynamic sampling, keeps drawing prompts
until the step has `rl.prompts_per_step` groups whose rewards differ. `Responses.rl_batch` is
the update's batch of the kept rows. Model output is only ever decoded and parsed, never
executed.

Two rewards are kept apart: `rewards`, what the update trains on, and `correct`, the
verifier's judgement, which the accuracy metrics always report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
import dataclasses
import functools
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
import numpy as np

from entropix_rl import interventions, sampling, sharding, tasks
from entropix_rl.models import ModelConfig
from entropix_rl.tokenizer import Tokenizer
from entropix_rl.train.config import Experiment

ROW_FIELDS = (
    "prompt_lengths",
    "completion_tokens",
    "completion_mask",
    "logp",
    "entropy",
    "truncated",
    "group_ids",
    "rewards",
    "correct",
    "prefix_lengths",
)


@dataclasses.dataclass
class Responses:
  """Scored rollout rows, rows of one prompt adjacent. N rows, prompt width P, completion C.

  Attributes:
    prompt_tokens: `[N, P]` int32, left-padded (a branched row's prompt includes its prefix).
    prompt_lengths: `[N]` int32 real prompt tokens.
    completion_tokens: `[N, C]` int32; completion_mask: `[N, C]` bool (through the stop).
    logp, entropy: `[N, C]` float32 from the sampler (at the temperature it sampled with).
    truncated: `[N]` bool, no stop token within the budget.
    group_ids: `[N]` int32, the row's prompt within the step (0 .. prompts − 1).
    examples: the row's task example; texts: the decoded completion.
    rewards: `[N]` float32 training rewards; correct: `[N]` bool, the verifier's judgement.
    info: per-row `[N]` or per-token `[N, C]` arrays that rollout interventions pass to the
      loss side (`TokenBatch.info`).
    row_metrics: `[N]` float arrays that rollout interventions report, by metric name; the
      step logs each one's mean over every host's rows (`rollout_metrics.response_metrics`),
      e.g. TTRL's `ttrl/label_accuracy`.
    prefix_lengths: `[N]` int32, how many trailing prompt tokens are a response prefix that a
      branched row continues (0 for a fresh sample, None = all 0). The row's response is that
      prefix followed by its completion: `texts` and the verifier see both, the update trains
      on the completion only.
  """

  prompt_tokens: np.ndarray
  prompt_lengths: np.ndarray
  completion_tokens: np.ndarray
  completion_mask: np.ndarray
  logp: np.ndarray
  entropy: np.ndarray
  truncated: np.ndarray
  group_ids: np.ndarray
  examples: list
  texts: list[str]
  rewards: np.ndarray
  correct: np.ndarray
  info: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  prefix_lengths: np.ndarray | None = None
  row_metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.prefix_lengths is None:
      self.prefix_lengths = np.zeros(len(self.texts), np.int32)

  @property
  def rows(self) -> int:
    return len(self.texts)

  def take(self, rows: Sequence[int] | np.ndarray) -> Responses:
    """The rows `rows`, in that order."""
    rows = np.asarray(rows, np.int64)
    return dataclasses.replace(
        self,
        prompt_tokens=self.prompt_tokens[rows],
        **{f: getattr(self, f)[rows] for f in ROW_FIELDS},
        examples=[self.examples[i] for i in rows],
        texts=[self.texts[i] for i in rows],
        info={k: v[rows] for k, v in self.info.items()},
        row_metrics={k: v[rows] for k, v in self.row_metrics.items()},
    )

  @classmethod
  def concat(cls, parts: Sequence[Responses], pad_id: int) -> Responses:
    """Rows of `parts` one after another; prompts left-padded to the widest."""
    width = max(p.prompt_tokens.shape[1] for p in parts)
    prompts = [
        np.concatenate(
            [
                np.full((p.rows, width - p.prompt_tokens.shape[1]), pad_id, np.int32),
                p.prompt_tokens,
            ],
            axis=1,
        )
        for p in parts
    ]
    keys, metrics = set(parts[0].info), set(parts[0].row_metrics)
    if any(set(p.info) != keys or set(p.row_metrics) != metrics for p in parts):
      raise ValueError("Responses.concat: every part must carry the same info and metric fields")
    return cls(
        prompt_tokens=np.concatenate(prompts),
        **{f: np.concatenate([getattr(p, f) for p in parts]) for f in ROW_FIELDS},
        examples=[e for p in parts for e in p.examples],
        texts=[t for p in parts for t in p.texts],
        info={k: np.concatenate([p.info[k] for p in parts]) for k in keys},
        row_metrics={k: np.concatenate([p.row_metrics[k] for p in parts]) for k in metrics},
    )

  def grouped(self) -> Responses:
    """The rows reordered so that each prompt's rows are adjacent (stable within a group)."""
    return self.take(np.argsort(self.group_ids, kind="stable"))

  def rl_batch(
      self, group_size: int, first_group: int = 0, *, sampler_logp: bool = False
  ) -> dict[str, Any]:
    """The update's batch of these rows (`train.update`), each block of `group_size` rows one
    prompt: `tokens [N, P+C]` (prompt and completion side by side), `attention_mask [N, P+C]`,
    `completion [N, C]`, `completion_mask [N, C]` float32, `rewards [N]`, `group_ids [N]`
    (`first_group`, the host's first global prompt, onwards), `cluster_ids [N]` and `info`
    when rollout interventions attached them, and with `sampler_logp` the sampler's
    log-probs and entropies as `old_logp`, `old_entropy [N, C]`.
    """
    width = self.prompt_tokens.shape[1]
    prompt_mask = np.arange(width)[None, :] >= (width - self.prompt_lengths)[:, None]
    completion_mask = np.asarray(self.completion_mask, np.float32)
    batch = {
        "tokens": np.concatenate([self.prompt_tokens, self.completion_tokens], axis=1).astype(
            np.int32
        ),
        "attention_mask": np.concatenate([prompt_mask, completion_mask > 0], axis=1),
        "completion": np.asarray(self.completion_tokens, np.int32),
        "completion_mask": completion_mask,
        "rewards": np.asarray(self.rewards, np.float32),
        "group_ids": np.repeat(
            first_group + np.arange(self.rows // group_size, dtype=np.int32), group_size
        ),
    }
    info = dict(self.info)
    if "cluster_ids" in info:
      batch["cluster_ids"] = info.pop("cluster_ids")
    if info:
      batch["info"] = info
    if sampler_logp:
      batch["old_logp"], batch["old_entropy"] = self.logp, self.entropy
    return batch


@dataclasses.dataclass
class RolloutContext:
  """What rollout interventions may use while reshaping a step's rollout.

  Attributes:
    sample: `(prompt_tokens, prompt_lengths, examples, group_ids, num_samples, key,
      temperature=None, prefix_lengths=None) -> Responses`, scored with the verifier,
      `num_samples` rows per prompt, each row's `group_ids` and example as given for its
      prompt; `prefix_lengths` `[prompts]` marks the trailing prompt tokens that are a response
      prefix (a branch: `Responses.prefix_lengths`).
    answer_keys: `(responses, mode) -> list` of final-answer keys (`Task.answer_key`).
    group_size: rows per prompt the update expects.
    min_prompt_bucket: smallest prompt width (for `rollout_ops.branch_prompts`).
    pad_id: the pad token; stop_ids: the stop tokens.
    key: a PRNG key for the interventions' own randomness (fold in a constant per use).
    step_delimiter_id: the token id of `rl.step_delimiter`, or −1 (none).
    decode: `token ids -> text`, the tokenizer's decoding (e.g. to match token strings), or
      None where no tokenizer is at hand.
  """

  sample: Callable[..., Responses]
  answer_keys: Callable[[Responses, str], list]
  group_size: int
  min_prompt_bucket: int
  pad_id: int
  stop_ids: tuple[int, ...]
  key: jax.Array
  step_delimiter_id: int = -1
  decode: Callable[[Sequence[int]], str] | None = None


class Sampler:
  """The policy's sampler on the host: samples prompts, decodes the completions and scores them
  with the task's verifier (`RolloutContext.sample`; evaluation)."""

  def __init__(
      self,
      model_cfg: ModelConfig,
      sampler_cfg: sampling.SamplerConfig,
      task: tasks.Task,
      tokenizer: Tokenizer,
      mesh: Mesh | None = None,
  ):
    self.model_cfg, self.sampler_cfg, self.task, self.tokenizer = (
        model_cfg,
        sampler_cfg,
        task,
        tokenizer,
    )
    self.mesh = mesh

  @classmethod
  def for_training(cls, exp: Experiment, mesh: Mesh | None = None) -> Sampler:
    """The rollout sampler of `exp`, with the per-token temperature rule of an active
    intervention (which reads that intervention's state, `collect`'s `rule_state`)."""
    rule, _ = interventions.temperature_rule(exp.loss)
    sampler_cfg = dataclasses.replace(exp.sampler, temperature_rule=rule)
    return cls(exp.model, sampler_cfg, exp.task, exp.tokenizer, mesh)

  def __call__(
      self,
      params: Any,
      prompt_tokens: np.ndarray,
      prompt_lengths: np.ndarray,
      examples: Sequence,
      group_ids: np.ndarray,
      num_samples: int,
      key: jax.Array,
      temperature: Any = None,
      rule_state: Any = None,
      prefix_lengths: np.ndarray | None = None,
      greedy: bool | None = None,
  ) -> Responses:
    """`num_samples` scored rows per prompt (`RolloutContext.sample`); `greedy` overrides
    `sampler.greedy` for this call."""
    cfg = dataclasses.replace(
        self.sampler_cfg,
        num_samples=num_samples,
        greedy=self.sampler_cfg.greedy if greedy is None else greedy,
    )
    rollout = jax.device_get(
        sampling.sample(
            self.model_cfg,
            params,
            prompt_tokens,
            prompt_lengths,
            key,
            cfg,
            mesh=self.mesh,
            temperature=temperature,
            rule_state=rule_state,
        )
    )
    prompt_tokens = np.asarray(prompt_tokens)
    width = prompt_tokens.shape[1]
    prefix_lengths = np.repeat(
        np.zeros(len(prompt_tokens), np.int32)
        if prefix_lengths is None
        else np.asarray(prefix_lengths, np.int32),
        num_samples,
    )
    prefixes = np.repeat(prompt_tokens, num_samples, axis=0)
    texts = self.decode(
        np.concatenate([prefix[width - n :], row])
        for prefix, n, row in zip(prefixes, prefix_lengths, np.asarray(rollout.completion_tokens))
    )
    row_examples = [ex for ex in examples for _ in range(num_samples)]
    scores = self.score(row_examples, texts)
    return Responses(
        prompt_tokens=np.asarray(rollout.prompt_tokens, np.int32),
        prompt_lengths=np.asarray(rollout.prompt_lengths, np.int32),
        completion_tokens=np.asarray(rollout.completion_tokens, np.int32),
        completion_mask=np.asarray(rollout.completion_mask, bool),
        logp=np.asarray(rollout.logp, np.float32),
        entropy=np.asarray(rollout.entropy, np.float32),
        truncated=np.asarray(rollout.truncated, bool),
        group_ids=np.repeat(np.asarray(group_ids, np.int32), num_samples),
        examples=row_examples,
        texts=texts,
        rewards=scores,
        correct=scores >= 1.0,
        prefix_lengths=prefix_lengths,
    )

  def decode(self, rows: Iterable[Sequence[int]]) -> list[str]:
    """The text of each row of token ids."""
    return [self.tokenizer.decode(row) for row in rows]

  def score(self, examples: Sequence[tasks.Example], texts: Sequence[str]) -> np.ndarray:
    """`[N]` float32 rewards: the task's verifier on each (example, response text)."""
    return np.asarray([self.task.verify(ex, t) for ex, t in zip(examples, texts)], np.float32)

  def answer_keys(self, responses: Responses, mode: str) -> list:
    """Each row's final-answer key (`Task.answer_key`; parsed, never executed)."""
    return [self.task.answer_key(ex, t, mode) for ex, t in zip(responses.examples, responses.texts)]


def collect(
    exp: Experiment,
    sampler: Sampler,
    prompts: Iterator[dict[str, Any]],
    params: Any,
    states: dict[str, Any],
    key: jax.Array,
) -> tuple[dict[str, Any], Responses, dict[str, float]]:
  """One step's rollout (module docstring).

  Args:
    exp: the experiment.
    sampler: `Sampler.for_training(exp, mesh)`.
    prompts: this host's prompt batches of `rl.prompts_per_step / processes` prompts
      (`data.make_prompt_pipeline`).
    params: the policy's params.
    states: the intervention states (`TrainState.interventions`).
    key: this step's sampling key.

  Returns:
    `(batch, responses, metrics)`: this host's rows of the update's batch (completions
    trimmed to their bucket), the first sampling round's responses (what the rollout metrics
    describe), and `dynamic_sampling/*` counts over every host.
  """
  rl = exp.config.rl
  local_groups = rl.prompts_per_step // jax.process_count()
  _, rule_owner = interventions.temperature_rule(exp.loss)
  sample = functools.partial(
      sampler,
      params,
      temperature=interventions.sampling_temperature(exp.loss, states),
      rule_state=states.get(rule_owner) if rule_owner else None,
  )
  kept: list[Responses] = []
  keeps: list[np.ndarray] = []
  n_kept = rounds = 0
  while n_kept < local_groups:
    rounds += 1
    responses = sample_round(exp, sampler, sample, next(prompts), states, key, rounds)
    keep = (
        informative_groups(responses.rewards, rl.group_size)
        if rl.dynamic_sampling
        else np.ones(local_groups, bool)
    )
    kept.append(responses)
    keeps.append(keep)
    n_kept += int(keep.sum())
    if not rl.dynamic_sampling or rounds >= rl.max_gen_batches:
      break
    if jax.process_count() > 1:  # every host samples the same number of rounds
      n_kept = int(multihost_utils.process_allgather(np.int32(n_kept)).min())
  rows, filled = _fill(kept, keeps, local_groups, exp.tokenizer.pad_id)
  batch = rows.rl_batch(
      rl.group_size,
      jax.process_index() * local_groups,
      sampler_logp=rl.old_logp_from_rollout,
  )
  batch = trim_completions(
      batch,
      budget=exp.sampler.max_new_tokens,
      buckets=rl.completion_buckets,
      longest=_longest_over_hosts(batch["completion_mask"]),
  )
  groups = sharding.gather_host_rows({"kept": sum(int(k.sum()) for k in keeps), "filled": filled})
  metrics = {
      "dynamic_sampling/gen_rounds": rounds,
      "dynamic_sampling/kept_groups": int(groups["kept"].sum()),
      "dynamic_sampling/filled_groups": int(groups["filled"].sum()),
  }
  return batch, kept[0], metrics


def sample_round(
    exp: Experiment,
    sampler: Sampler,
    sample: Callable[..., Responses],
    prompts: dict[str, Any],
    states: dict[str, Any],
    key: jax.Array,
    round_index: int,
) -> Responses:
  """One sampling round of a step: the prompts' rows, reshaped by the rollout interventions,
  with answer clusters attached when an intervention reads them."""
  rl = exp.config.rl
  round_key = jax.random.fold_in(key, round_index)
  per_prompt = interventions.samples_per_prompt(exp.loss, rl.group_size, jax.device_get(states))
  responses = sample(
      prompts["prompt_tokens"],
      prompts["prompt_lengths"],
      prompts["examples"],
      np.arange(len(prompts["examples"])),
      per_prompt,
      round_key,
  )
  ctx = RolloutContext(
      sample=sample,
      answer_keys=sampler.answer_keys,
      group_size=rl.group_size,
      min_prompt_bucket=exp.config.data.max_prompt_len,
      pad_id=exp.tokenizer.pad_id,
      stop_ids=exp.sampler.stop_ids,
      key=jax.random.fold_in(round_key, 1),
      step_delimiter_id=exp.step_delimiter_id,
      decode=exp.tokenizer.decode,
  )
  responses = interventions.reshape(exp.loss, responses, ctx, states)
  if "cluster_ids" in interventions.needs(exp.loss):
    keys = sampler.answer_keys(responses, rl.cluster_by)
    responses.info["cluster_ids"] = tasks.answer_clusters(keys, responses.group_ids)
  return responses


def informative_groups(rewards: np.ndarray, group_size: int) -> np.ndarray:
  """DAPO's dynamic-sampling filter: `[G]` bool, True for groups whose rewards are not all
  equal (an all-equal group has zero advantages and no gradient)."""
  r = np.asarray(rewards).reshape(-1, group_size)
  if group_size == 1:
    return np.ones(r.shape[0], bool)
  return r.std(axis=1) > 0


COMPLETION_FIELDS = ("completion", "completion_mask", "old_logp", "old_entropy")


def trim_completions(
    batch: dict[str, Any], *, budget: int, buckets: int, longest: int
) -> dict[str, Any]:
  """Cuts an `rl_batch`'s completion axis to the smallest bucket that holds `longest` tokens.

  The buckets are the budget and its halves, `ceil(budget / 2^k)` for `k < buckets`, so a run
  compiles its update for at most `buckets` shapes while short completions stop paying for
  the whole budget. Only padding is cut.

  Args:
    batch: `Responses.rl_batch` arrays, completion width `budget`.
    budget: `sampler.max_new_tokens`.
    buckets: `rl.completion_buckets` (1 = never cut).
    longest: the longest completion of the step (over every host).

  Returns:
    The batch with completion width the chosen bucket.
  """
  widths = [-(-budget // 2**k) for k in range(buckets)]
  width = min(w for w in widths if w >= longest)
  if width == budget:
    return batch
  cut = batch["tokens"].shape[1] - budget + width
  trimmed = {k: v[:, :width] for k, v in batch.items() if k in COMPLETION_FIELDS}
  trimmed.update(tokens=batch["tokens"][:, :cut], attention_mask=batch["attention_mask"][:, :cut])
  return dict(batch, **trimmed)


def abstract_rl_batch(
    n: int, prompt_len: int, completion_len: int, sharding: jax.sharding.Sharding | None = None
) -> dict[str, jax.ShapeDtypeStruct]:
  """The `rl_batch` layout for `n` rows as abstract arrays, to lower `rl_update` without data.

  The fields, shapes and dtypes come from `Responses.rl_batch` itself on one row of zeros, so
  they cannot drift from what the trainer feeds the update.
  """
  zeros = lambda width, dtype: np.zeros((1, width), dtype)
  one = Responses(
      prompt_tokens=zeros(prompt_len, np.int32),
      prompt_lengths=np.full((1,), prompt_len, np.int32),
      completion_tokens=zeros(completion_len, np.int32),
      completion_mask=np.ones((1, completion_len), bool),
      logp=zeros(completion_len, np.float32),
      entropy=zeros(completion_len, np.float32),
      truncated=np.zeros((1,), bool),
      group_ids=np.zeros((1,), np.int32),
      examples=[None],
      texts=[""],
      rewards=np.zeros((1,), np.float32),
      correct=np.zeros((1,), bool),
  ).rl_batch(group_size=1)
  return {
      k: jax.ShapeDtypeStruct((n, *v.shape[1:]), v.dtype, sharding=sharding) for k, v in one.items()
  }


def _fill(
    kept: list[Responses], keeps: list[np.ndarray], groups: int, pad_id: int
) -> tuple[Responses, int]:
  """Exactly `groups` groups: the kept ones in order, then (if short) filtered-out ones.
  Returns them and how many were filled in."""
  chosen, fallback = [], []
  for part, keep in zip(kept, keeps):
    for j, ok in enumerate(keep):
      (chosen if ok else fallback).append(part.take(np.flatnonzero(part.group_ids == j)))
  filled = max(0, groups - len(chosen))
  return Responses.concat((chosen + fallback)[:groups], pad_id), filled


def _longest_over_hosts(completion_mask: np.ndarray) -> int:
  """The longest completion of the step, over every host's rows."""
  longest = int(completion_mask.sum(axis=1).max(initial=1))
  if jax.process_count() > 1:
    longest = int(multihost_utils.process_allgather(np.int32(longest)).max())
  return longest
