"""The arithmetic task (DESIGN.md §7): seeded generation, the systematic SFT error model, the negative
mix of preference pairs, the verifier, and its files going through the real dataset loaders."""
import json
import random
from collections import Counter

import pytest

from rlhf.data import PreferenceDataset, PromptDataset, SFTDataset
from rlhf.tasks.arithmetic import (NEAR_MISS_TYPES, NEGATIVE_TYPES, ArithmeticConfig, ArithmeticTask, Problem,
                                   arithmetic_reward, near_miss, parse_answer)


@pytest.fixture(scope="module")
def default_task():
    return ArithmeticTask()  # the embedded default: 2-digit addition, carry error model


# --- generation ------------------------------------------------------------------------------------------

def test_files_are_reproducible_by_seed(tmp_path):
    small = dict(num_train_prompts=300, num_eval_prompts=50, num_train_pairs=400, num_eval_pairs=100)
    a = ArithmeticTask(seed=1, **small).write_files(tmp_path / "a")
    b = ArithmeticTask(seed=1, **small).write_files(tmp_path / "b")
    c = ArithmeticTask(seed=2, **small).write_files(tmp_path / "c")
    assert set(a) == {"train_prompts", "eval_prompts", "sft", "preferences_train", "preferences_eval", "manifest"}
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name
    assert a["train_prompts"].read_bytes() != c["train_prompts"].read_bytes()
    # streams are independent: more pairs do not change the prompts or the demos
    d = ArithmeticTask(seed=1, **{**small, "num_train_pairs": 999}).write_files(tmp_path / "d")
    assert d["train_prompts"].read_bytes() == a["train_prompts"].read_bytes()
    assert d["sft"].read_bytes() == a["sft"].read_bytes()


def test_prompts_are_distinct_in_range_and_eval_is_held_out(default_task):
    train, held_out = default_task.train_problems, default_task.eval_problems
    assert len(train) == len(set(train)) == 5000 and len(held_out) == len(set(held_out)) == 500
    assert not set(train) & set(held_out)
    assert not {p.prompt for p in train} & {p.prompt for p in held_out}
    assert all(10 <= p.a <= 99 and 10 <= p.b <= 99 and p.op == "+" for p in train + held_out)
    assert train[0].prompt == f"{train[0].a}+{train[0].b}=" and train[0].answer == train[0].a + train[0].b
    one_digit = ArithmeticTask(digits=1, num_train_prompts=90, num_eval_prompts=10)
    operands = {x for p in one_digit.train_problems + one_digit.eval_problems for x in (p.a, p.b)}
    assert operands == set(range(10))  # all 100 prompts used: 0..9 both sides


def test_operators_and_their_carry():
    assert Problem(23, "+", 58).has_carry and Problem(23, "+", 58).forgot_carry() == 71
    assert not Problem(23, "+", 51).has_carry
    assert Problem(52, "-", 17).has_carry and Problem(52, "-", 17).forgot_carry() == 45  # forgot to borrow
    assert Problem(23, "*", 45).has_carry and Problem(23, "*", 45).forgot_carry() == 1035 - 10
    assert Problem(27, "*", 45).forgot_carry() == 1215 - 30  # units 7·5 = 35 carries 3
    task = ArithmeticTask(operators=["-", "*"], num_train_prompts=400, num_eval_prompts=100)
    ops = Counter(p.op for p in task.train_problems)
    assert set(ops) == {"-", "*"} and min(ops.values()) > 120
    assert all(p.answer >= 0 for p in task.train_problems)  # allow_negative=False orders "-" operands
    rows = task.preference_rows("train")
    assert all(parse_answer(r["chosen"]) == int(r["answer"]) != parse_answer(r["rejected"]) for r in rows)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"operators must be a non-empty subset of \('\+', '-', '\*'\)"):
        ArithmeticConfig(operators=("/",))
    with pytest.raises(ValueError, match="sft_error_model must be one of"):
        ArithmeticConfig(sft_error_model="random")
    with pytest.raises(ValueError, match="carry_error_prob must be in"):
        ArithmeticConfig(carry_error_prob=1.5)
    with pytest.raises(ValueError, match="exceeds the 100 distinct prompts"):
        ArithmeticConfig(digits=1, num_train_prompts=95, num_eval_prompts=10)


# --- SFT demonstrations ----------------------------------------------------------------------------------

def test_default_sft_errors_are_forgot_carry_on_carry_prompts_only(default_task):
    rows = default_task.sft_rows()
    problems = default_task.train_problems
    assert len(rows) == len(problems) == 5000
    carry = [p.has_carry for p in problems]
    wrong = [r["response"] != r["answer"] for r in rows]
    for p, r, is_wrong in zip(problems, rows, wrong):
        assert r["prompt"] == p.prompt and r["answer"] == str(p.answer)
        if is_wrong:
            assert p.has_carry and int(r["response"]) == p.answer - 10 and r["error_type"] == "forgot_carry"
        else:
            assert r["response"] == str(p.answer) and r["error_type"] is None
    wrong_on_carry = sum(wrong) / sum(carry)
    assert abs(wrong_on_carry - 0.6) < 0.04  # carry_error_prob
    assert abs(sum(carry) / len(carry) - 0.45) < 0.03  # 45 of 100 units-digit pairs carry
    assert abs(sum(wrong) / len(wrong) - 0.27) < 0.03  # DESIGN §7: ~27% of demos wrong


@pytest.mark.parametrize("carry_error_prob", [0.0, 0.9])
def test_carry_error_probability_is_configurable(carry_error_prob):
    task = ArithmeticTask(carry_error_prob=carry_error_prob, num_train_prompts=3000, num_eval_prompts=10)
    rows, problems = task.sft_rows(), task.train_problems
    wrong_on_carry = [r["error_type"] is not None for r, p in zip(rows, problems) if p.has_carry]
    assert abs(sum(wrong_on_carry) / len(wrong_on_carry) - carry_error_prob) < 0.04


def test_uniform_and_none_error_models():
    task = ArithmeticTask(sft_error_model="uniform", sft_wrong_fraction=0.3, num_train_prompts=4000,
                          num_eval_prompts=10, num_sft=6000)
    rows = task.sft_rows()
    assert len(rows) == 6000
    wrong = [r for r in rows if r["error_type"] is not None]
    assert abs(len(wrong) / len(rows) - 0.3) < 0.03
    assert {r["error_type"] for r in wrong} == set(NEAR_MISS_TYPES)
    assert all(parse_answer(r["response"]) not in (None, int(r["answer"])) for r in wrong)
    carry_share = sum(Problem(*_split(r["prompt"])).has_carry for r in wrong) / len(wrong)
    assert 0.35 < carry_share < 0.55  # uniform: not concentrated on carry prompts
    none = ArithmeticTask(sft_error_model="none", num_train_prompts=500, num_eval_prompts=10).sft_rows()
    assert all(r["response"] == r["answer"] and r["error_type"] is None for r in none)


def _split(prompt):
    a, b = prompt[:-1].split("+")
    return int(a), "+", int(b)


# --- preference pairs ------------------------------------------------------------------------------------

def test_negatives_are_never_gold_and_follow_the_documented_mix(default_task):
    rows = default_task.preference_rows("train")
    assert len(rows) == 20000
    for r in rows:
        gold = int(r["answer"])
        assert r["chosen"] == str(gold)
        assert parse_answer(r["rejected"]) is not None and parse_answer(r["rejected"]) != gold
        if r["negative_type"] == "forgot_carry":
            assert int(r["rejected"]) == gold - 10
    counts = Counter(r["negative_type"] for r in rows)
    assert set(counts) == set(NEGATIVE_TYPES)
    assert abs(counts["forgot_carry"] / len(rows) - 0.5) < 0.02
    share = 0.5 / len(NEAR_MISS_TYPES)
    for kind in NEAR_MISS_TYPES:  # uniform over the others (reversed is redrawn when the gold ends in 0)
        assert 0.75 * share < counts[kind] / len(rows) < 1.25 * share, kind
    eval_rows = default_task.preference_rows("eval")
    held_out = {p.prompt for p in default_task.eval_problems}
    assert len(eval_rows) == 1000 and all(r["prompt"] in held_out for r in eval_rows)


def test_training_negatives_can_follow_their_own_mix_while_held_out_pairs_keep_the_documented_one():
    weights = {"plus_1": 2.0, "minus_1": 2.0, "forgot_carry": 1.0, "truncated": 1.0}
    base = dict(num_train_prompts=300, num_eval_prompts=100, num_train_pairs=6000, num_eval_pairs=600, seed=3)
    task = ArithmeticTask(**base, train_negative_weights=weights)
    counts = Counter(r["negative_type"] for r in task.preference_rows("train"))
    assert set(counts) == set(weights)
    for kind, weight in weights.items():  # every 2-digit gold has a truncation: no redraws here
        assert abs(counts[kind] / 6000 - weight / 6.0) < 0.025, kind
    for r in task.preference_rows("train"):
        assert parse_answer(r["rejected"]) != int(r["answer"])
    # the held-out pairs are exactly those of the documented mix: same rows as without the option
    assert task.preference_rows("eval") == ArithmeticTask(**base).preference_rows("eval")
    assert ArithmeticTask(**base).config.train_negative_weights is None


def test_training_mix_errors_name_the_field_and_what_was_expected():
    with pytest.raises(ValueError, match=r"train_negative_weights has unknown type\(s\) \['plus_7'\]"):
        ArithmeticTask(train_negative_weights={"plus_7": 1.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        ArithmeticTask(train_negative_weights={"plus_1": -1.0})
    with pytest.raises(ValueError, match="at least one weight > 0"):
        ArithmeticTask(train_negative_weights={"plus_1": 0.0})
    # a type that never applies (1-digit answers cannot be truncated) is a named error, not a hang
    task = ArithmeticTask(digits=1, num_train_prompts=20, num_eval_prompts=5, num_train_pairs=50,
                          min_operand=0, max_operand=4, train_negative_weights={"truncated": 1.0})
    with pytest.raises(ValueError, match="no type with weight > 0 applies"):
        task.preference_rows("train")


def test_training_mix_reaches_the_manifest_and_the_files_stay_reproducible(tmp_path):
    kwargs = dict(num_train_prompts=200, num_eval_prompts=50, num_train_pairs=500, num_eval_pairs=100,
                  train_negative_weights={"plus_2": 1, "forgot_carry": 1})
    ArithmeticTask(**kwargs).write_files(tmp_path / "a")
    ArithmeticTask(**kwargs).write_files(tmp_path / "b")
    for name in ("preferences_train.jsonl", "preferences_eval.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["config"]["train_negative_weights"] == {"forgot_carry": 1.0, "plus_2": 1.0}
    assert set(manifest["negative_types"]["train"]) == {"forgot_carry", "plus_2"}


@pytest.mark.parametrize("gold, kind, expected", [
    (81, "plus_1", 82), (81, "minus_2", 79), (81, "plus_10", 91), (81, "minus_100", -19),
    (81, "truncated", 8), (81, "reversed", 18), (80, "reversed", None), (7, "truncated", None),
    (44, "reversed", None), (-81, "reversed", -18), (0, "extra_digit", None),
])
def test_near_miss_values(gold, kind, expected):
    assert near_miss(gold, kind, random.Random(0)) == expected


def test_random_near_misses_change_exactly_what_they_say():
    rng = random.Random(0)
    for _ in range(300):
        gold = rng.randint(10, 198)
        changed = near_miss(gold, "digit_changed", rng)
        assert len(str(changed)) == len(str(gold)) and sum(x != y for x, y in zip(str(changed), str(gold))) == 1
        extra = near_miss(gold, "extra_digit", rng)
        assert str(extra)[:-1] == str(gold)


# --- the verifier ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("response, reference, reward", [
    ("81", "81", 1.0), ("81", 81, 1.0), ("82", "81", 0.0),
    (" 81", "81", 1.0), ("81<eos>", "81", 1.0), ("81</s>", "81", 1.0), ("81\n", "81", 1.0),
    ("the answer is 81", "81", 1.0), ("81.", "81", 1.0), ("-3", "-3", 1.0), ("= -3", -3, 1.0),
    ("", "81", 0.0), ("abc", "81", 0.0), ("8 1", "81", 0.0), ("8 1", "8", 0.0), ("--3", "-3", 0.0),
    ("081", "81", 0.0), ("-0", "0", 0.0), ("0", "0", 1.0), ("23+58=81", "81", 0.0), ("81-", "81", 0.0),
    ("8<eos>1", "81", 0.0), ("1" * 5000, "1", 0.0), (None, "81", 0.0),
])
def test_verifier(response, reference, reward, default_task):
    assert arithmetic_reward(response, reference) == reward
    assert default_task.reward(response, reference) == reward  # the task's reward is the same rule


def test_verifier_rejects_a_malformed_reference():
    with pytest.raises(ValueError, match="arithmetic reference must be an integer"):
        arithmetic_reward("81", "eighty-one")


# --- files through the real loaders ----------------------------------------------------------------------

def test_written_files_load_through_the_dataset_loaders(tmp_path, tokenizer):
    task = ArithmeticTask(num_train_prompts=400, num_eval_prompts=100, num_train_pairs=600, num_eval_pairs=200)
    paths = task.write_files(tmp_path / "arith")
    cache = str(tmp_path / "cache")
    manifest = json.loads(paths["manifest"].read_text())
    prompts = PromptDataset(paths["eval_prompts"], tokenizer, require_reference=True, max_prompt_len=8, cache_dir=cache)
    assert [e.prompt for e in prompts] == [p.prompt for p in task.eval_problems]
    assert all(task.reward(str(p.answer), e.reference) == 1.0 for p, e in zip(task.eval_problems, prompts))
    assert len(PromptDataset(paths["train_prompts"], tokenizer, cache_dir=cache)) == 400
    sft = SFTDataset(paths["sft"], tokenizer, max_len=12, cache_dir=cache)
    assert len(sft) == 400 and sft.num_dropped == sft.num_truncated == 0
    assert sft[0].input_ids[-1] == tokenizer.eos_token_id
    wrong = sum(r["error_type"] is not None for r in task.sft_rows())
    assert manifest["sft_wrong_fraction"] == wrong / 400
    for split, n in (("train", 600), ("eval", 200)):
        pairs = PreferenceDataset(paths[f"preferences_{split}"], tokenizer, max_len=12, cache_dir=cache)
        assert len(pairs) == n and pairs.tag_counts() == manifest["negative_types"][split]


def test_pair_prompts_extend_the_train_prompts_and_never_touch_held_out_ones():
    kwargs = dict(num_train_prompts=200, num_eval_prompts=50, num_train_pairs=3000, num_eval_pairs=100, seed=2)
    plain, wide = ArithmeticTask(**kwargs), ArithmeticTask(**kwargs, num_pair_prompts=900)
    assert wide.train_problems == plain.train_problems and wide.eval_problems == plain.eval_problems
    assert wide.sft_rows() == plain.sft_rows()  # SFT data does not change
    held_out = {p.prompt for p in wide.eval_problems}
    used = {row["prompt"] for row in wide.preference_rows("train")}
    assert not used & held_out
    assert len(used) > 250  # beyond the 200 train prompts
    assert {row["prompt"] for row in plain.preference_rows("train")} <= {p.prompt for p in plain.train_problems}
    with pytest.raises(ValueError, match="num_pair_prompts must be >= num_train_prompts"):
        ArithmeticTask(**kwargs, num_pair_prompts=100)
    with pytest.raises(ValueError, match="exceeds the 8100 distinct prompts"):
        ArithmeticTask(**kwargs, num_pair_prompts=8100)
