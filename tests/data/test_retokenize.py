"""A reward model with its own tokenizer scores the text the actor sampled (issue 15 §1): rollouts in the
character-level actor's ids are re-encoded in a BPE tokenizer with merges, other special tokens and a
ChatML template, and the reward model's scores equal those of the decoded text encoded directly."""
import pytest
import torch

from rlhf.data.batch import RolloutBatch
from rlhf.data.retokenize import Retokenizer, same_tokenizer, tokenizer_difference
from rlhf.models import load_reward_model, load_tokenizer, reward_scores
from rlhf.models.tiny import build_tiny_bpe_tokenizer, build_tiny_reward_model, build_tiny_tokenizer
from rlhf.workers.reward import reward_retokenizer

PROMPTS = ["23+58=", "7+5=", "40+41="]
RESPONSES = ["81", "12", "8"]  # the last one was cut off (no EOS)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("retok")
    build_tiny_tokenizer(root / "char")
    build_tiny_bpe_tokenizer(root / "bpe")
    build_tiny_reward_model(root / "rm", tokenizer_dir=root / "bpe", num_layers=1, hidden_size=32, num_heads=2,
                            initializer_range=0.5)
    return root


def actor_rollouts(char, raw_prompts=None) -> RolloutBatch:
    """What the actor's generation gives: left-padded prompt ids (BOS first), right-padded response ids
    ending in EOS unless truncated, in the character-level tokenizer."""
    prompt_rows = [[char.bos_token_id] + char(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    response_rows = [char(r, add_special_tokens=False)["input_ids"] for r in RESPONSES]
    response_rows = [ids + [char.eos_token_id] for ids in response_rows[:2]] + [response_rows[2]]
    L, T = max(map(len, prompt_rows)), max(map(len, response_rows))
    ids, attn, mask = [], [], []
    for p, r in zip(prompt_rows, response_rows):
        ids.append([char.pad_token_id] * (L - len(p)) + p + r + [char.pad_token_id] * (T - len(r)))
        attn.append([0] * (L - len(p)) + [1] * (len(p) + len(r)) + [0] * (T - len(r)))
        mask.append([1.0] * len(r) + [0.0] * (T - len(r)))
    return RolloutBatch(input_ids_BS=torch.tensor(ids), attention_mask_BS=torch.tensor(attn),
                        mask_BT=torch.tensor(mask), truncated_B=torch.tensor([False, False, True]),
                        prompts=list(PROMPTS), responses=list(RESPONSES), raw_prompts=raw_prompts)


def test_tokenizers_are_compared_by_every_id(dirs):
    char, bpe = load_tokenizer(dirs / "char"), load_tokenizer(dirs / "bpe")
    assert same_tokenizer(char, load_tokenizer(dirs / "char"))
    assert "vocabulary sizes differ (21 vs 400)" == tokenizer_difference(char, bpe)


def test_plain_rows_are_the_decoded_text_in_the_reward_models_tokens(dirs):
    char, bpe = load_tokenizer(dirs / "char"), load_tokenizer(dirs / "bpe", padding_side="right")
    ids_BS, mask_BS = Retokenizer(char, bpe)(actor_rollouts(char))  # no raw prompts: decoded from the ids
    eos = bpe.eos_token_id
    expected = [bpe(p)["input_ids"] + bpe(r, add_special_tokens=False)["input_ids"] for p, r in zip(PROMPTS, RESPONSES)]
    expected = [expected[0] + [eos], expected[1] + [eos], expected[2]]  # the truncated row gets no EOS
    for row, want in enumerate(expected):
        assert ids_BS[row, :len(want)].tolist() == want and mask_BS[row].sum() == len(want)
        assert (ids_BS[row, len(want):] == bpe.pad_token_id).all()
    assert bpe.convert_ids_to_tokens(expected[0]) == ["23", "+", "58", "=", "81", "<|endoftext|>"]


def test_chat_prompts_use_the_reward_models_own_template(dirs):
    char, bpe = load_tokenizer(dirs / "char"), load_tokenizer(dirs / "bpe", padding_side="right")
    raw = [[{"role": "user", "content": p}] for p in PROMPTS]
    ids_BS, mask_BS = Retokenizer(char, bpe)(actor_rollouts(char, raw_prompts=raw))
    text = bpe.decode(ids_BS[0, :int(mask_BS[0].sum())])
    assert text == "<|im_start|>user\n23+58=<|im_end|>\n<|im_start|>assistant\n81<|im_end|>\n"
    plain_as_chat = Retokenizer(char, bpe, use_chat_template=True)(actor_rollouts(char))[0]
    assert torch.equal(plain_as_chat, ids_BS)  # use_chat_template=true wraps plain prompts the same way


def test_scores_equal_the_reward_model_run_directly_on_the_decoded_text(dirs):
    char, bpe = load_tokenizer(dirs / "char"), load_tokenizer(dirs / "bpe", padding_side="right")
    rm = load_reward_model(dirs / "rm").eval()
    ids_BS, mask_BS = Retokenizer(char, bpe)(actor_rollouts(char))
    with torch.no_grad():
        scores_B = reward_scores(rm, ids_BS, mask_BS)
        direct = [float(reward_scores(rm, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0])
                  for ids in (bpe(p + r)["input_ids"] + ([bpe.eos_token_id] if i < 2 else [])
                              for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)))]
        wrong = reward_scores(rm, actor_rollouts(char).input_ids_BS, actor_rollouts(char).attention_mask_BS)
    assert scores_B.tolist() == pytest.approx(direct, abs=1e-5)
    assert not torch.allclose(wrong, scores_B, atol=1e-3)  # the actor's ids would have scored something else


def test_the_fast_path_is_kept_for_the_same_tokenizer_and_a_long_row_is_refused(dirs):
    assert reward_retokenizer(str(dirs / "char"), str(dirs / "char"), None, 64) is None
    assert reward_retokenizer(str(dirs / "char"), str(dirs / "bpe"), None, 64) is not None
    char, bpe = load_tokenizer(dirs / "char"), load_tokenizer(dirs / "bpe", padding_side="right")
    with pytest.raises(ValueError, match=r"rollout row 0: 6 tokens in the reward model's tokenizer, more than its "
                                         r"context of 5"):
        Retokenizer(char, bpe, max_len=5)(actor_rollouts(char))
