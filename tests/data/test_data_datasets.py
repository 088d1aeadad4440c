"""The three datasets: exact token layouts, chat-template path, over-long policies and their counts."""
import logging

import pytest

from rlhf.data import IGNORE_INDEX, DataError, PreferenceDataset, PromptDataset, SFTDataset


def char_ids(tokenizer, text):
    """One id per character (the tiny tokenizer has no merges), looked up independently of the dataset code."""
    return [tokenizer.convert_tokens_to_ids(c) for c in text]


# --- prompts ---------------------------------------------------------------------------------------------

def test_prompt_tokens_and_references(tokenizer, write_jsonl, cache_dir):
    path = write_jsonl([{"prompt": "12+3=", "answer": "15"}, {"prompt": "7*8=", "answer": "56"}])
    ds = PromptDataset(path, tokenizer, cache_dir=cache_dir)
    assert len(ds) == 2 and ds.num_truncated == ds.num_dropped == 0
    assert ds[0].input_ids == char_ids(tokenizer, "12+3=")
    assert [e.reference for e in ds] == ["15", "56"]
    path = write_jsonl([{"prompt": "12+3=", "answer": 15}], name="int.jsonl")
    assert PromptDataset(path, tokenizer, cache_dir=cache_dir)[0].reference == 15  # carried unchanged
    # reference column absent: references are None unless required
    path = write_jsonl([{"prompt": "1+1="}], name="noref.jsonl")
    assert PromptDataset(path, tokenizer, cache_dir=cache_dir)[0].reference is None
    with pytest.raises(DataError, match="field 'answer': missing field"):
        PromptDataset(path, tokenizer, require_reference=True, cache_dir=cache_dir)


@pytest.fixture
def mixed_lengths(write_jsonl):
    # token lengths 4, 8, 6 with max_prompt_len=6: row 1 is over-long
    return write_jsonl([{"prompt": "1+1="}, {"prompt": "123+456="}, {"prompt": "12+34="}])


def test_prompt_overlong_error(tokenizer, mixed_lengths, cache_dir):
    with pytest.raises(DataError) as info:
        PromptDataset(mixed_lengths, tokenizer, max_prompt_len=6, cache_dir=cache_dir)
    assert info.value.row == 1 and info.value.field == "prompt"
    assert "prompt has 8 tokens, expected at most max_prompt_len=6" in str(info.value)


def test_prompt_overlong_truncate_keeps_the_end(tokenizer, mixed_lengths, cache_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="rlhf.data.prompts"):
        ds = PromptDataset(mixed_lengths, tokenizer, max_prompt_len=6, overlong="truncate", cache_dir=cache_dir)
    assert len(ds) == 3 and ds.num_truncated == 1 and ds.num_dropped == 0
    assert ds.stats.truncated_rows == [1] and ds.stats.as_dict()["truncated"] == 1
    assert ds[1].input_ids == char_ids(tokenizer, "3+456=")  # the last 6 tokens
    assert ds[2].input_ids == char_ids(tokenizer, "12+34=")  # at the limit: untouched
    assert "1 truncated" in caplog.text


def test_prompt_overlong_drop(tokenizer, mixed_lengths, cache_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="rlhf.data.prompts"):
        ds = PromptDataset(mixed_lengths, tokenizer, max_prompt_len=6, overlong="drop", cache_dir=cache_dir)
    assert [e.index for e in ds] == [0, 2] and ds.num_dropped == 1 and ds.num_truncated == 0
    assert ds.stats.as_dict() == {"source": str(mixed_lengths), "total": 3, "kept": 2, "truncated": 0, "dropped": 1}
    assert "1 dropped" in caplog.text
    with pytest.raises(ValueError, match="overlong policy must be one of"):
        PromptDataset(mixed_lengths, tokenizer, overlong="skip", cache_dir=cache_dir)
    with pytest.raises(DataError, match="no rows left"):
        PromptDataset(mixed_lengths, tokenizer, max_prompt_len=3, overlong="drop", cache_dir=cache_dir)


def test_chat_template_applies_to_messages_and_on_request(tokenizer, write_jsonl, cache_dir):
    messages = [{"role": "system", "content": "(2) "}, {"role": "user", "content": "1+1="}]
    path = write_jsonl([{"prompt": messages}], name="chat.jsonl")
    ds = PromptDataset(path, tokenizer, cache_dir=cache_dir)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ds[0].prompt == rendered == "(2) 1+1="  # the tiny template concatenates contents
    assert ds[0].input_ids == char_ids(tokenizer, "(2) 1+1=")
    with pytest.raises(DataError, match="use_chat_template=False"):
        PromptDataset(path, tokenizer, use_chat_template=False, cache_dir=cache_dir)
    # a template that marks the turns shows the wrapping of a plain prompt explicitly
    marked = _marked_template_tokenizer(tokenizer)
    plain = write_jsonl([{"prompt": "1+1="}], name="plain.jsonl")
    assert PromptDataset(plain, marked, cache_dir=cache_dir)[0].prompt == "1+1="
    wrapped = PromptDataset(plain, marked, use_chat_template=True, cache_dir=cache_dir)[0]
    assert wrapped.prompt == "(1+1=)=" and wrapped.input_ids == char_ids(tokenizer, "(1+1=)=")


def _marked_template_tokenizer(tokenizer):
    """A copy of the tiny tokenizer whose template wraps user turns in () and starts replies with '='."""
    import copy

    marked = copy.deepcopy(tokenizer)
    marked.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}({{ m['content'] }}){% else %}={{ m['content'] }}"
        "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}={% endif %}")
    return marked


# --- SFT -------------------------------------------------------------------------------------------------

def test_sft_labels_mask_the_prompt_token_by_token(tokenizer, write_jsonl, cache_dir):
    path = write_jsonl([{"prompt": "23+58=", "response": "81"}, {"prompt": "1+1=", "response": "2"}])
    ds = SFTDataset(path, tokenizer, cache_dir=cache_dir)
    eos = tokenizer.eos_token_id
    assert ds.format == "prompt_response"
    assert ds[0].input_ids == char_ids(tokenizer, "23+58=81") + [eos]
    assert ds[0].labels == [IGNORE_INDEX] * 6 + char_ids(tokenizer, "81") + [eos]
    for example, prompt in zip(ds, ["23+58=", "1+1="]):
        for position, (token, label) in enumerate(zip(example.input_ids, example.labels)):
            if position < len(prompt):
                assert label == IGNORE_INDEX
            else:
                assert label == token
    batch = ds.collate([ds[0], ds[1]])
    assert batch.labels_BS.tolist()[1] == [IGNORE_INDEX] * 4 + char_ids(tokenizer, "2") + [eos] + [IGNORE_INDEX] * 3
    assert batch.attention_mask_BS.tolist()[1] == [1] * 6 + [0] * 3
    assert batch.input_ids_BS.tolist()[1][6:] == [tokenizer.pad_token_id] * 3


def test_sft_messages_use_the_chat_template(tokenizer, write_jsonl, cache_dir):
    marked = _marked_template_tokenizer(tokenizer)
    conversation = [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "3+3="}, {"role": "assistant", "content": "6"}]
    path = write_jsonl([{"messages": conversation}])
    ds = SFTDataset(path, marked, cache_dir=cache_dir)
    assert ds.format == "messages"
    # prompt = every turn but the last, with the generation prompt; loss only on the last reply + its eos
    prompt_ids = char_ids(tokenizer, "(2+2=)=4") + [marked.eos_token_id] + char_ids(tokenizer, "(3+3=)=")
    reply_ids = char_ids(tokenizer, "6") + [marked.eos_token_id]
    assert ds[0].input_ids == prompt_ids + reply_ids
    assert ds[0].labels == [IGNORE_INDEX] * len(prompt_ids) + reply_ids
    assert ds[0].prompt_len == len(prompt_ids)


def test_sft_multi_turn_demos_train_on_every_assistant_turn_only(tokenizer, write_jsonl, cache_dir):
    """train_on="assistant": a tool-use demonstration (call, the tool's reply, answer) is trained on the
    policy's two turns; the prompt and the tool's reply are context, as an environment's tokens are in RL."""
    conversation = [{"role": "user", "content": "12+34="}, {"role": "assistant", "content": "(12+34)"},
                    {"role": "tool", "content": "=46 "}, {"role": "assistant", "content": "46"}]
    path = write_jsonl([{"messages": conversation}])
    ds = SFTDataset(path, tokenizer, cache_dir=cache_dir, train_on="assistant")
    eos = tokenizer.eos_token_id
    call, reply, answer = char_ids(tokenizer, "(12+34)") + [eos], char_ids(tokenizer, "=46 "), char_ids(tokenizer, "46") + [eos]
    prompt = char_ids(tokenizer, "12+34=")
    assert ds[0].input_ids == prompt + call + reply + answer  # the trivial template: contents, EOS after the assistant's
    assert ds[0].labels == [IGNORE_INDEX] * len(prompt) + call + [IGNORE_INDEX] * len(reply) + answer
    assert ds[0].prompt_len == len(prompt)
    last = SFTDataset(path, tokenizer, cache_dir=cache_dir)  # the default: the last turn only
    assert last[0].input_ids == ds[0].input_ids
    assert last[0].labels == [IGNORE_INDEX] * (len(prompt) + len(call) + len(reply)) + answer
    truncated = SFTDataset(path, tokenizer, cache_dir=cache_dir, train_on="assistant", max_len=len(prompt) + 3,
                           overlong="truncate")
    assert truncated[0].labels == [IGNORE_INDEX] * len(prompt) + call[:3]
    with pytest.raises(ValueError, match=r"SFTDataset: train_on='first', expected one of \['last', 'assistant'\]"):
        SFTDataset(path, tokenizer, cache_dir=cache_dir, train_on="first")


def test_sft_assistant_turns_on_chatml_match_the_whole_rendering(write_jsonl, cache_dir, tmp_path):
    """On a BPE tokenizer with a real template (ChatML): each assistant turn's labels are exactly its
    tokens in the whole conversation's encoding, the end-of-turn included."""
    from rlhf.models import load_tokenizer
    from rlhf.models.tiny import build_tiny_bpe_tokenizer

    build_tiny_bpe_tokenizer(tmp_path / "bpe")
    tok = load_tokenizer(str(tmp_path / "bpe"))
    conversation = [{"role": "user", "content": "12+34="}, {"role": "assistant", "content": "(12+34)"},
                    {"role": "user", "content": "=46"}, {"role": "assistant", "content": "46"}]
    ds = SFTDataset(write_jsonl([{"messages": conversation}]), tok, cache_dir=cache_dir, train_on="assistant")
    trained = [t for t, label in zip(ds[0].input_ids, ds[0].labels) if label != IGNORE_INDEX]
    assert tok.decode(trained) == "(12+34)<|im_end|>\n46<|im_end|>\n"


def test_sft_overlong_policies(tokenizer, write_jsonl, cache_dir):
    # lengths (prompt+response+eos): 4+2+1=7 and 6+3+1=10, with max_len=8
    path = write_jsonl([{"prompt": "1+1=", "response": "22"}, {"prompt": "50+50=", "response": "100"}])
    with pytest.raises(DataError, match=r"row 1 \(line 2\), field 'response': prompt\+response has 10 tokens"):
        SFTDataset(path, tokenizer, max_len=8, cache_dir=cache_dir)
    ds = SFTDataset(path, tokenizer, max_len=8, overlong="truncate", cache_dir=cache_dir)
    assert ds.num_truncated == 1 and ds.num_dropped == 0
    assert ds[1].input_ids == char_ids(tokenizer, "50+50=10")  # response cut, eos lost
    assert ds[1].labels == [IGNORE_INDEX] * 6 + char_ids(tokenizer, "10")
    ds = SFTDataset(path, tokenizer, max_len=8, overlong="drop", cache_dir=cache_dir)
    assert [e.index for e in ds] == [0] and ds.num_dropped == 1
    # truncation that would leave no response token drops the row instead
    ds = SFTDataset(path, tokenizer, max_len=6, overlong="truncate", cache_dir=cache_dir)
    assert ds.num_truncated == 1 and ds.num_dropped == 1 and ds[0].input_ids == char_ids(tokenizer, "1+1=22")


# --- preferences -----------------------------------------------------------------------------------------

def test_preference_pairs_share_the_prompt_and_end_in_eos(tokenizer, write_jsonl, cache_dir):
    rows = [{"prompt": "23+58=", "chosen": "81", "rejected": "71", "negative_type": "forgot_carry"},
            {"prompt": "1+1=", "chosen": "2", "rejected": "22", "negative_type": "extra_digit"}]
    ds = PreferenceDataset(write_jsonl(rows), tokenizer, cache_dir=cache_dir)
    eos = tokenizer.eos_token_id
    assert ds[0].chosen_ids == char_ids(tokenizer, "23+58=81") + [eos]
    assert ds[0].rejected_ids == char_ids(tokenizer, "23+58=71") + [eos]
    assert ds[0].prompt_len == 6 and ds[0].tag == "forgot_carry"
    assert ds.tag_counts() == {"forgot_carry": 1, "extra_digit": 1}
    batch = ds.collate([ds[0], ds[1]])
    S = 9  # the longest of all four sequences
    assert batch.chosen_input_ids_BS.shape == batch.rejected_input_ids_BS.shape == (2, S)
    assert batch.chosen_attention_mask_BS.tolist()[1] == [1] * 6 + [0] * 3  # "1+1=2<eos>", right-padded
    assert batch.rejected_attention_mask_BS.tolist()[1] == [1] * 7 + [0] * 2
    assert batch.prompt_lens_B.tolist() == [6, 4] and batch.tags == ["forgot_carry", "extra_digit"]


def test_preference_chat_prompt(tokenizer, write_jsonl, cache_dir):
    marked = _marked_template_tokenizer(tokenizer)
    rows = [{"prompt": [{"role": "user", "content": "1+1="}], "chosen": "2", "rejected": "3"}]
    ex = PreferenceDataset(write_jsonl(rows), marked, cache_dir=cache_dir)[0]
    assert ex.chosen_ids == char_ids(tokenizer, "(1+1=)=2") + [marked.eos_token_id]  # eos from the template
    assert ex.rejected_ids == char_ids(tokenizer, "(1+1=)=3") + [marked.eos_token_id]
    assert ex.prompt_len == 7 and ex.tag is None


def test_preference_overlong_policies(tokenizer, write_jsonl, cache_dir):
    # sequence lengths with max_len=8: row 0 → 6/6; row 1 → 10/10, still different when cut to 8;
    # row 2 → 10/10, identical when cut to 8 (so truncation must drop it)
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"},
            {"prompt": "50+50=", "chosen": "100", "rejected": "200"},
            {"prompt": "99+99=", "chosen": "198", "rejected": "199"}]
    path = write_jsonl(rows)
    with pytest.raises(DataError, match=r"row 1 \(line 2\), field 'chosen': sequence has 10 tokens"):
        PreferenceDataset(path, tokenizer, max_len=8, cache_dir=cache_dir)
    ds = PreferenceDataset(path, tokenizer, max_len=8, overlong="truncate", cache_dir=cache_dir)
    assert ds.stats.truncated_rows == [1] and ds.stats.dropped_rows == [2]
    assert ds[1].chosen_ids == char_ids(tokenizer, "50+50=10") and ds[1].rejected_ids == char_ids(tokenizer, "50+50=20")
    ds = PreferenceDataset(path, tokenizer, max_len=8, overlong="drop", cache_dir=cache_dir)
    assert [e.index for e in ds] == [0] and ds.num_dropped == 2 and ds.num_truncated == 0


def test_chat_rows_with_an_unknown_role_are_refused_naming_file_row_and_message(tokenizer, write_jsonl, cache_dir):
    """Issue 16 §12: a typo in a role ('asistant') was rendered as if it were a known turn."""
    good = [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]
    typo = [{"role": "user", "content": "2+2="}, {"role": "asistant", "content": "4"}]
    path = write_jsonl([{"messages": good}, {"messages": typo}])
    with pytest.raises(DataError, match=r"data.jsonl, row 1 \(line 2\), field 'messages': message 1: unknown role "
                                        r"'asistant'; expected one of \['system', 'user', 'assistant', 'tool'\]"):
        SFTDataset(path, tokenizer, cache_dir=cache_dir)
    prompts = write_jsonl([{"prompt": [{"role": "User", "content": "1+1="}]}], name="prompts.jsonl")
    with pytest.raises(DataError, match=r"row 0 \(line 1\), field 'prompt': message 0: unknown role 'User'"):
        PromptDataset(prompts, tokenizer, reference_key=None, cache_dir=cache_dir)


def test_a_chat_template_that_raises_names_the_row(tokenizer, write_jsonl, cache_dir, tmp_path):
    """A template's own error (jinja's raise_exception, e.g. roles that must alternate) names the row."""
    import copy

    strict = copy.deepcopy(tokenizer)
    strict.chat_template = ("{% for m in messages %}{% if loop.index0 % 2 == 0 and m['role'] != 'user' %}"
                            "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
                            "{{ m['content'] }}{% endfor %}")
    rows = [{"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]},
            {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "2"}]}]
    with pytest.raises(DataError, match=r"row 1 \(line 2\), field 'messages': the tokenizer's chat template failed "
                                        r"on this conversation: TemplateError: roles must alternate"):
        SFTDataset(write_jsonl(rows), strict, cache_dir=cache_dir)
