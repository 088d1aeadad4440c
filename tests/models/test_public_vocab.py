"""A public family's real tokenizer (issue 15 §5): Mistral 7B's, from the mistral-common package.

The oracle is mistral-common's own encoder (Mistral AI's reference implementation): every id our HF
tokenizer directory, its chat template and our datasets produce must be the one it produces. Then a
small random-init MistralForCausalLM of that vocabulary scores sequences through rlhf's loaders exactly
as transformers does when run directly on each unpadded sequence.
"""
import json

import pytest
import torch

from rlhf.models import load_causal_lm, load_tokenizer, response_logprobs
from rlhf.models.public_vocab import build_mistral_tokenizer
from rlhf.models.tiny import build_tiny_model

# Where HF's conversion of a SentencePiece model differs from SentencePiece itself (as Mistral's own hub
# tokenizer.json does), texts avoid it: a run of spaces splits differently ("a  b": ▁a ▁▁ b, not ▁a ▁ ▁b),
# and "</s>" written in text is the EOS token (chat templates rely on that), not the characters.
TEXTS = ["12+34=", "Hello world, 12+34=", "one tab\there, digits 12345", "naïve café — 東京", "line one\nline two"]
CONVERSATIONS = [[("user", "What is 12+34?")],
                 [("user", "12+34="), ("assistant", "46"), ("user", "And 5+5?")]]


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mistral_vocab")
    build_mistral_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def reference():
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.v1()


def _reference_chat(reference, turns) -> list[int]:
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[role](content=text) for role, text in turns])
    return reference.encode_chat_completion(request).tokens


def test_the_tokenizer_is_mistral_7bs_id_for_id(mistral_dir, reference):
    tokenizer = load_tokenizer(mistral_dir)  # the path every role takes
    assert len(tokenizer) == 32000 and (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # no pad token in Mistral's vocabulary: EOS
    sentencepiece = reference.instruct_tokenizer.tokenizer
    for text in TEXTS:
        assert tokenizer(text).input_ids == sentencepiece.encode(text, bos=True, eos=False), text
    for turns in CONVERSATIONS:
        rendered = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in turns], tokenize=False,
                                                 add_generation_prompt=True)
        assert tokenizer(rendered, add_special_tokens=False).input_ids == _reference_chat(reference, turns), rendered


def test_the_datasets_encode_conversations_as_mistral_does(mistral_dir, reference, tmp_path):
    """An SFT chat row is the prompt Mistral would be served plus " 46</s>"; a plain prompt wrapped by
    use_chat_template=True is exactly Mistral's serving prompt."""
    from rlhf.data.prompts import PromptDataset
    from rlhf.data.sft import SFTDataset

    tokenizer = load_tokenizer(mistral_dir)
    rows = tmp_path / "chat.jsonl"
    rows.write_text(json.dumps({"prompt": "12+34=", "messages": [{"role": "user", "content": "12+34="},
                                                                 {"role": "assistant", "content": "46"}]}) + "\n")
    served = _reference_chat(reference, [("user", "12+34=")])
    answer = reference.instruct_tokenizer.tokenizer.encode("46", bos=False, eos=True)
    example = SFTDataset(str(rows), tokenizer, max_len=64)[0]
    assert example.input_ids == served + answer and example.prompt_len == len(served)
    prompt = PromptDataset(str(rows), tokenizer, use_chat_template=True, reference_key=None)[0]
    assert list(prompt.input_ids) == served


@torch.no_grad()
def test_a_model_of_the_real_vocabulary_scores_as_transformers_run_directly(mistral_dir, tmp_path):
    """rlhf's batched, left-padded response log-probs equal transformers' on each sequence alone."""
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_model(tmp_path / "lm", tokenizer_dir=mistral_dir, arch="mistral", num_layers=2,
                                 hidden_size=64, num_heads=4, initializer_range=0.2)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["vocab_size"] == 32000 and config["num_key_value_heads"] == 1
    tokenizer = load_tokenizer(model_dir)
    prompts = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                       add_generation_prompt=True), add_special_tokens=False).input_ids
               for q in ("12+34=", "What is 7+8? Answer briefly.")]
    responses = [tokenizer(" 46</s>", add_special_tokens=False).input_ids, tokenizer(" 15", add_special_tokens=False).input_ids]
    P, T = max(map(len, prompts)), max(map(len, responses))
    ids_BS = torch.full((2, P + T), tokenizer.pad_token_id)
    mask_BS = torch.zeros_like(ids_BS)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids_BS[b, P - len(p):P + len(r)] = torch.tensor(p + r)
        mask_BS[b, P - len(p):P + len(r)] = 1
    ours_BT = response_logprobs(load_causal_lm(model_dir).eval(), ids_BS, mask_BS, T)
    direct = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for b, (p, r) in enumerate(zip(prompts, responses)):
        logits = direct(torch.tensor([p + r])).logits[0, len(p) - 1:-1]
        expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
        torch.testing.assert_close(ours_BT[b, :len(r)], expected, atol=1e-5, rtol=0)
        assert bool((ours_BT[b, len(r):] == 0).all())  # padding positions carry nothing
