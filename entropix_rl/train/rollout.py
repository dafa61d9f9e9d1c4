"""A step's rollout on the host: sample, score, let rollout-side interventions reshape it.

`Responses` holds scored rows (numpy) grouped by prompt. `collect_step` samples the step's
prompts (`samples_per_prompt` each, at the temperature rollout interventions choose), scores
them with the task's verifier, then hands them to every active `rollout` intervention in
registry order, each of which may sample more (`RolloutContext.sample`: branches from
prefixes, a second temperature), replace the training rewards (majority votes, cluster
rewards) or choose rows, and must leave exactly `group_size` rows per prompt. Dynamic sampling
then keeps informative groups. Model output is only ever decoded and parsed, never executed.

Two rewards are kept apart: `rewards`, what the update trains on, and `correct`, the
verifier's judgement, which the accuracy metrics always report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any

import jax
import numpy as np

from entropix_rl import interventions, sampling

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
    keys = set(parts[0].info)
    if any(set(p.info) != keys for p in parts):
      raise ValueError("Responses.concat: every part must carry the same info fields")
    return cls(
        prompt_tokens=np.concatenate(prompts),
        **{f: np.concatenate([getattr(p, f) for p in parts]) for f in ROW_FIELDS},
        examples=[e for p in parts for e in p.examples],
        texts=[t for p in parts for t in p.texts],
        info={k: np.concatenate([p.info[k] for p in parts]) for k in keys},
    )

  def grouped(self) -> Responses:
    """The rows reordered so that each prompt's rows are adjacent (stable within a group)."""
    return self.take(np.argsort(self.group_ids, kind="stable"))


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
  """Samples and scores prompts with the policy (`RolloutContext.sample`, `sample_prompts`)."""

  def __init__(self, model_cfg, sampler_cfg: sampling.SamplerConfig, task, tokenizer, mesh):
    self.model_cfg, self.sampler_cfg, self.task, self.tokenizer = (
        model_cfg,
        sampler_cfg,
        task,
        tokenizer,
    )
    self.mesh = mesh

  def __call__(
      self,
      params,
      prompt_tokens: np.ndarray,
      prompt_lengths: np.ndarray,
      examples: Sequence,
      group_ids: np.ndarray,
      num_samples: int,
      key: jax.Array,
      temperature: Any = None,
      rule_state: Any = None,
      prefix_lengths: np.ndarray | None = None,
  ) -> Responses:
    cfg = dataclasses.replace(self.sampler_cfg, num_samples=num_samples)
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
    texts = [
        self.tokenizer.decode(np.concatenate([prefix[width - n :], row]))
        for prefix, n, row in zip(prefixes, prefix_lengths, np.asarray(rollout.completion_tokens))
    ]
    row_examples = [ex for ex in examples for _ in range(num_samples)]
    scores = np.asarray([self.task.verify(ex, t) for ex, t in zip(row_examples, texts)], np.float32)
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

  def answer_keys(self, responses: Responses, mode: str) -> list:
    return [self.task.answer_key(ex, t, mode) for ex, t in zip(responses.examples, responses.texts)]


def rollout_interventions(loss_cfg) -> tuple[interventions.Intervention, ...]:
  """The active interventions with a rollout side, in registry order."""
  return tuple(
      e
      for e in interventions.compose.active(loss_cfg)
      if e.rollout is not None
      or e.samples_per_prompt is not None
      or e.sampling_temperature is not None
      or e.temperature_rule is not None
  )


def changes_temperature(loss_cfg) -> bool:
  """Whether an active intervention samples at another temperature than the configured one."""
  return any(
      e.sampling_temperature is not None or e.temperature_rule is not None
      for e in rollout_interventions(loss_cfg)
  )


def samples_per_prompt(loss_cfg, group_size: int, states: dict) -> int:
  """Responses sampled per prompt before rollout interventions reshape the group."""
  counts = {
      e.name: int(e.samples_per_prompt(loss_cfg, group_size, states.get(e.name)))
      for e in rollout_interventions(loss_cfg)
      if e.samples_per_prompt is not None
  }
  if len(set(counts.values())) > 1:
    raise ValueError(f"rollout interventions ask for different samples per prompt: {counts}")
  return next(iter(counts.values()), group_size)


def sampling_temperature(loss_cfg, states: dict) -> Any:
  """The temperature a rollout intervention chooses for this step's sampling, or None."""
  chosen = [
      e.sampling_temperature(loss_cfg, states.get(e.name))
      for e in rollout_interventions(loss_cfg)
      if e.sampling_temperature is not None
  ]
  if len(chosen) > 1:
    raise ValueError("more than one active intervention chooses the sampling temperature")
  return chosen[0] if chosen else None


def temperature_rule(loss_cfg) -> tuple[Callable | None, str | None]:
  """(the per-token temperature rule, the name of the intervention whose state it reads)."""
  rules = [
      (e.temperature_rule(loss_cfg), e.name)
      for e in rollout_interventions(loss_cfg)
      if e.temperature_rule is not None
  ]
  if len(rules) > 1:
    raise ValueError("more than one active intervention sets a per-token temperature rule")
  return rules[0] if rules else (None, None)


def reshape(loss_cfg, responses: Responses, ctx: RolloutContext, states: dict) -> Responses:
  """Runs every active rollout intervention's `rollout` hook, in order, and checks the groups."""
  for entry in rollout_interventions(loss_cfg):
    if entry.rollout is not None:
      responses = entry.rollout(loss_cfg, responses, ctx, states.get(entry.name))
  counts = np.bincount(responses.group_ids)
  if np.any(counts != ctx.group_size) or np.any(np.diff(responses.group_ids) < 0):
    raise ValueError(
        f"after the rollout interventions every prompt must have rl.group_size="
        f"{ctx.group_size} adjacent rows; got {counts.tolist()}"
    )
  return responses
