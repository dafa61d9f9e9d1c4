"""experiments/evaluate.py: benchmark layouts, avg@n and pass@k, from a Hugging Face checkpoint
and from a training run."""

import json
import os
import subprocess
import sys

import jax
import pytest

from entropix_rl import benchmark_eval, data, sampling
from entropix_rl.models import init_params, tiny_config
from entropix_rl.tasks.base import Example
from entropix_rl.tokenizer import CharTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "benchmarks")


@pytest.mark.parametrize(
    "name,prompt,answer",
    [
        ("math500.jsonl", "What is $1+1$?", "2"),
        ("aime_2024.jsonl", "Find $3 \\cdot 7$.", "21"),
        ("aime_2025.jsonl", "Compute $2^5$.", "32"),
        ("amc_2023.parquet", "What is $9 \\div 3$?", "3.0"),
    ],
)
def test_benchmark_layouts(name, prompt, answer):
  first = data.read_prompt_file(os.path.join(FIXTURES, name))[0]
  assert (first.prompt, first.answer) == (prompt, answer)


def test_pass_k_values():
  assert benchmark_eval.pass_k_values(16) == (1, 2, 4, 8, 16)
  assert benchmark_eval.pass_k_values(6) == (1, 2, 4, 6)


def test_avg_and_pass_at_k_over_batches():
  tokenizer = CharTokenizer("0123456789+=")
  model = tiny_config(vocab_size=tokenizer.vocab_size, max_position_embeddings=32)
  params = init_params(model, jax.random.PRNGKey(0))
  examples = [Example(prompt=f"{i}+{i}=", answer=str(2 * i), index=i) for i in range(5)]
  calls = []

  def verify(example, text):  # the examples with an even index are always right
    calls.append(example.index)
    return float(example.index % 2 == 0)

  result = benchmark_eval.evaluate_benchmark(
      model,
      params,
      examples,
      tokenizer,
      verify,
      sampling.SamplerConfig(max_new_tokens=4),
      n=4,
      max_prompt_len=8,
      batch_prompts=2,
  )
  assert sorted(calls) == sorted([i for i in range(5) for _ in range(4)])
  assert result["prompts"] == 5 and result["per_prompt_correct"] == [4, 0, 4, 0, 4]
  assert result["avg@n"] == pytest.approx(0.6)
  assert result["pass@k"] == {1: pytest.approx(0.6), 2: pytest.approx(0.6), 4: pytest.approx(0.6)}


@pytest.mark.slow
def test_evaluate_binary_on_a_hugging_face_checkpoint(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  from tests.hf_utils import make_hf_model, save_hf_model

  words = ["<pad>", "<s>", "</s>", "\\boxed{", "}", "2", "21", "What", "is", "Find", "$"]
  core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
  core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  checkpoint = str(tmp_path / "model")
  save_hf_model(make_hf_model("qwen2", vocab_size=len(words)), checkpoint)
  PreTrainedTokenizerFast(
      tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
  ).save_pretrained(checkpoint)
  out = str(tmp_path / "eval")
  proc = subprocess.run(
      [
          sys.executable,
          "experiments/evaluate.py",
          f"--checkpoint={checkpoint}",
          f"--data={FIXTURES}/math500.jsonl,{FIXTURES}/aime_2024.jsonl",
          "--n=4",
          "--max_new_tokens=6",
          "--max_prompt_len=32",
          f"--out={out}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      env={**os.environ, "PYTHONPATH": REPO},
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(os.path.join(out, "eval.json")))
  assert set(report["results"]) == {"math500.jsonl", "aime_2024.jsonl"}
  for result in report["results"].values():
    assert set(result["pass@k"]) == {"1", "2", "4"} and result["samples_per_prompt"] == 4
    assert 0.0 <= result["avg@n"] <= 1.0 and result["mean_length"] > 0
  assert report["settings"]["temperature"] == 0.6
  assert os.path.getsize(os.path.join(out, "pass_at_k.png")) > 1000
  assert "ETA" in proc.stderr  # absl logging
