"""SFT → RM → PPO through the real `rlhf` command on a model with a public family's real tokenizer.

Issue 15 §5. The prepare stage builds a small random-init MistralForCausalLM with Mistral 7B's own
tokenizer (32,000 ids, from the mistral-common package; rlhf/models/public_vocab.py) and every stage
renders its rows with Mistral's instruct chat template (`<s>[INST] 12+34= [/INST] 46</s>`). A few steps
per stage, then: the outputs keep the real vocabulary and template, and the PPO model's log-probs through
rlhf's loaders equal those of transformers run directly on each sequence.

Slow (≈ 3 min on 2 cores): `python -m pytest -m slow tests/recipes/test_public_vocab_e2e.py`, a step of
`.ci/run`.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

RLHF = Path(sys.executable).parent / "rlhf"
SMOKE = [
    "logging=quiet", "prepare.tiny_model.arch=mistral", "prepare.tiny_model.tokenizer=mistral",
    "sft.data.use_chat_template=true", "rm.data.use_chat_template=true", "ppo.data.use_chat_template=true",
    # "<s>[INST] 12+34= [/INST] 46</s>" is 19 Mistral tokens where the character tokenizer needs 9
    "sft.data.max_len=32", "rm.data.max_len=32", "ppo.data.max_prompt_len=24", "sft.gold_eval.max_prompt_len=24",
    "prepare.task_kwargs.num_train_prompts=200", "prepare.task_kwargs.num_eval_prompts=16",
    "prepare.task_kwargs.num_train_pairs=64", "prepare.task_kwargs.num_eval_pairs=16",
    "sft.trainer.total_steps=3", "sft.trainer.batch_size=8", "sft.trainer.micro_batch_size=8",
    "sft.engine.warmup_steps=0", "rm.engine.warmup_steps=0",
    "rm.trainer.total_steps=3", "rm.trainer.batch_size=8", "rm.trainer.micro_batch_size=8",
    "ppo.trainer.total_steps=2", "ppo.rollout.prompts_per_step=8", "ppo.algorithm.update.micro_batch_size=4",
    "ppo.engines.forward_micro_batch_size=8", "ppo.data.max_eval_prompts=8", "sft.gold_eval.max_prompts=8",
]


@pytest.mark.slow
@torch.no_grad()
def test_sft_rm_ppo_on_mistral_7bs_vocabulary_and_chat_template(tmp_path):
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from transformers import AutoModelForCausalLM

    from rlhf.models import load_causal_lm, load_tokenizer, response_logprobs

    run_dir = tmp_path / "run"
    result = subprocess.run([str(RLHF), "recipe=quickstart", f"run_dir={run_dir}", *SMOKE], capture_output=True,
                            text=True, timeout=1800, env={**os.environ})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [summary[s]["steps"] for s in ("sft", "rm", "ppo")] == [3, 3, 2]
    assert 0 <= summary["sft"]["gold_accuracy"] <= 1 and 0 <= summary["ppo"]["gold_reward_final"] <= 1

    final = run_dir / "ppo" / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["vocab_size"] == 32000
    tokenizer = load_tokenizer(final)
    served = MistralTokenizer.v1().encode_chat_completion(
        ChatCompletionRequest(messages=[UserMessage(content="12+34=")])).tokens
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "12+34="}], tokenize=False,
                                             add_generation_prompt=True)
    prompt = tokenizer(rendered, add_special_tokens=False).input_ids
    assert prompt == served  # the trained model's directory still speaks Mistral's ids and template

    response = tokenizer(" 46</s>", add_special_tokens=False).input_ids
    ids_BS = torch.tensor([prompt + response])
    ours = response_logprobs(load_causal_lm(final).eval(), ids_BS, torch.ones_like(ids_BS), len(response))[0]
    logits = AutoModelForCausalLM.from_pretrained(final).eval()(ids_BS).logits[0, len(prompt) - 1:-1]
    direct = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(response)[:, None])[:, 0]
    torch.testing.assert_close(ours, direct, atol=1e-5, rtol=0)
    assert not torch.equal(ours, torch.full_like(ours, ours[0]))  # a real distribution, not a constant
