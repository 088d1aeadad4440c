"""The offline tiny-model factory: seeded, saved as standard HF directories with ids from the tokenizer."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.models import build_tiny_model, build_tiny_reward_model


@pytest.mark.parametrize("arch, model_type", [("llama", "llama"), ("gpt2", "gpt2")])
def test_model_dir_is_standard_and_uses_the_tokenizer_ids(lm_dirs, arch, model_type):
    out = lm_dirs[arch]
    config = json.loads((out / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert config["model_type"] == model_type and config["vocab_size"] == len(tokenizer) == 21
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 1, 0)
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))


def test_seed_fixes_the_weights_without_touching_global_rng(tiny_root, tmp_path):
    rng_before = torch.get_rng_state()
    dirs = [build_tiny_model(tmp_path / name, tiny_root / "tok", hidden_size=32, seed=seed)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    assert torch.equal(torch.get_rng_state(), rng_before)
    weights = [AutoModelForCausalLM.from_pretrained(d).lm_head.weight for d in dirs]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_reward_model_dir_has_one_label(rm_dirs):
    config = json.loads((rm_dirs["llama"] / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1


def test_builds_its_own_tokenizer_and_rejects_unknown_arch(tmp_path):
    out = build_tiny_reward_model(tmp_path / "rm", arch="gpt2", hidden_size=32)
    assert (out / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="unknown tiny arch 'mamba'"):
        build_tiny_model(tmp_path / "m", tmp_path / "rm", arch="mamba")
