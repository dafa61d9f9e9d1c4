"""experiments/export_hf.py: a trained run's checkpoint becomes a Hugging Face directory that
transformers loads and that gives our logits; experiments/evaluate.py scores the same run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from entropix_rl import export
from entropix_rl import tokenizer as tokenizer_lib
from entropix_rl.models import forward
from entropix_rl.tokenizer import HFTokenizer
from entropix_rl.train import loop
from entropix_rl.train.config import resolve
from entropix_rl.train.config_dict import typed
from tests.test_train import small_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_export_of_a_trained_run_loads_in_transformers_with_our_logits(tmp_path):
  run = str(tmp_path / "run")
  config = small_config(
      **{
          "rl.steps": 2,
          "sft.steps": 4,
          "eval.every": 0,
          "checkpoint.save_every": 1,
          "sampler.top_k": 5,
      }
  )
  loop.run(typed(config), run, log=False)
  out = str(tmp_path / "hf")
  proc = subprocess.run(
      [sys.executable, "experiments/export_hf.py", f"--workdir={run}", f"--out={out}", "--step=1"],
      cwd=REPO,
      capture_output=True,
      text=True,
      env={**os.environ, "PYTHONPATH": REPO},
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["step"] == 1 and summary["tokenizer"] == "char"
  assert {
      "config.json",
      "model.safetensors",
      "generation_config.json",
      "char_tokenizer.json",
  } <= set(summary["files"])

  exp = resolve(typed(config))
  tokenizer = exp.tokenizer
  exported = tokenizer_lib.load(out)  # the alphabet travels with the export
  assert exported.alphabet == tokenizer.alphabet and exported.vocab_size == tokenizer.vocab_size
  generation = json.load(open(os.path.join(out, "generation_config.json")))
  assert generation["eos_token_id"] == list(tokenizer.stop_ids)
  assert generation["top_k"] == 5 and generation["max_new_tokens"] == exp.sampler.max_new_tokens

  from transformers import AutoModelForCausalLM

  model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
  params = export.load_run_policy(run, 1).params
  tokens = np.random.default_rng(0).integers(3, exp.model.vocab_size, (2, 12)).astype(np.int32)
  ours, _ = forward(exp.model, params, tokens)
  with torch.no_grad():
    theirs = model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4, rtol=1e-4)

  evaluated = str(tmp_path / "eval")  # the same run through experiments/evaluate.py
  proc = subprocess.run(
      [
          sys.executable,
          "experiments/evaluate.py",
          f"--workdir={run}",
          "--num_prompts=8",
          "--n=4",
          f"--out={evaluated}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      env={**os.environ, "PYTHONPATH": REPO},
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(os.path.join(evaluated, "eval.json")))
  result = report["results"]["decomposition_eval"]
  assert result["prompts"] == 8 and set(result["pass@k"]) == {"1", "2", "4"}
  assert report["settings"]["checkpoint_step"] == 2  # the latest checkpoint, recorded


def test_evaluate_errors_are_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "experiments/evaluate.py", f"--workdir={tmp_path}", f"--out={tmp_path}/o"],
      cwd=REPO,
      capture_output=True,
      text=True,
      env={**os.environ, "PYTHONPATH": REPO},
      timeout=300,
  )
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "run_info.json does not exist: --workdir must be a training run" in proc.stderr


def test_export_needs_a_training_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="run_info.json does not exist"):
    export.export_run(str(tmp_path), str(tmp_path / "out"))


def test_hf_tokenizer_files_round_trip(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import AutoTokenizer, PreTrainedTokenizerFast

  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "two": 3, "plus": 4, "is": 5, "four": 6}
  core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  core.pre_tokenizer = pre_tokenizers.Whitespace()
  PreTrainedTokenizerFast(
      tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
  ).save_pretrained(tmp_path / "tok")
  HFTokenizer(str(tmp_path / "tok")).save_pretrained(tmp_path / "copy")
  copy = AutoTokenizer.from_pretrained(str(tmp_path / "copy"), local_files_only=True)
  assert copy.encode("two plus two is four", add_special_tokens=False) == [3, 4, 3, 5, 6]
  assert copy.eos_token_id == 2
