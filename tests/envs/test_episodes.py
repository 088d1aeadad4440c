"""Multi-turn episodes: assembly against hand-built tensors (model/env/model/env/model turns), the
episode runner's turn loop with a scripted policy, end reasons, and per-turn rewards in the advantages."""
import math

import pytest
import torch

from rlhf.data.batch import RolloutBatch
from rlhf.envs import EnvGroup, StepResult, make_env, make_env_group
from rlhf.envs.episode import Episode, assemble, split_final_reward
from rlhf.trainers.episodes import EpisodeRunner

PAD = 0


def test_assembly_of_model_env_model_env_model_turns_matches_hand_built_tensors():
    """Prompt [5, 6]; turns: model [11, 12] (lp -0.1, -0.2), env [90], model [13] (lp -0.3), env [91, 92],
    model [14, 1] (lp -0.4, -0.5). A second episode: prompt [7], model [15, 1] only."""
    a = Episode([5, 6], group_id=0, reference="r")
    a.add_policy_turn([11, 12], [-0.1, -0.2])
    a.reward_turn(0.25)
    a.add_observation([90])
    a.add_policy_turn([13], [-0.3])
    a.reward_turn(0.0)
    a.add_observation([91, 92])
    a.add_policy_turn([14, 1], [-0.4, -0.5])
    a.reward_turn(1.0)
    a.gold = 1.0
    a.end("done")
    b = Episode([7], group_id=0)
    b.add_policy_turn([15, 1], [-0.6, -0.7])
    b.reward_turn(0.5)
    b.end("max_tokens")
    t = assemble([a, b], PAD)
    assert t["input_ids_BS"].tolist() == [[5, 6, 11, 12, 90, 13, 91, 92, 14, 1],
                                          [PAD, 7, 15, 1, PAD, PAD, PAD, PAD, PAD, PAD]]
    assert t["attention_mask_BS"].tolist() == [[1] * 10, [0, 1, 1, 1, 0, 0, 0, 0, 0, 0]]
    # the loss mask covers only what the policy sampled: environment tokens are context
    assert t["mask_BT"].tolist() == [[1, 1, 0, 1, 0, 0, 1, 1], [1, 1, 0, 0, 0, 0, 0, 0]]
    expected_lp = [[-0.1, -0.2, 0, -0.3, 0, 0, -0.4, -0.5], [-0.6, -0.7, 0, 0, 0, 0, 0, 0]]
    assert torch.allclose(t["old_logprobs_BT"], torch.tensor(expected_lp))
    # each turn's reward at its last sampled token; the last turn's at the episode's last sampled token
    assert t["turn_rewards_BT"].tolist() == [[0, 0.25, 0, 0, 0, 0, 0, 1.0], [0, 0.5, 0, 0, 0, 0, 0, 0]]
    assert t["scores_B"].tolist() == [1.25, 0.5] and t["gold_B"][0] == 1.0 and math.isnan(t["gold_B"][1])
    assert t["truncated_B"].tolist() == [False, True] and t["group_ids_B"].tolist() == [0, 0]
    batch = RolloutBatch(**{k: v for k, v in t.items() if k != "turn_rewards_BT"})
    assert batch.prompt_len == 2 and batch.response_len == 8  # the batch's own layout rules accept it
    final_B, earlier_BT = split_final_reward(t["turn_rewards_BT"], t["mask_BT"])
    assert final_B.tolist() == [1.0, 0.5]
    assert earlier_BT.tolist() == [[0, 0.25, 0, 0, 0, 0, 0, 0], [0] * 8]


def test_episode_rejects_inconsistent_turns():
    e = Episode([1], 0)
    with pytest.raises(ValueError, match="2 tokens came with 1 log-probs"):
        e.add_policy_turn([3, 4], [-1.0])
    with pytest.raises(ValueError, match="before the policy's first turn"):
        e.reward_turn(1.0)
    with pytest.raises(ValueError, match="unknown end reason"):
        e.end("bored")


class CharTokenizer:
    """Characters 'a'.. as ids 10.. ; id 1 = EOS, 0 = pad."""

    pad_token_id, eos_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10 + ord(c) - ord("0") for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("0") + i - 10) for i in ids if i >= 10 or not skip_special_tokens and i > 1)


class ScriptedActor:
    """`generate` answers each context with the next guess of a fixed script (per call), then EOS."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.calls = tokenizer, list(script), []

    def call(self, method, items, params):
        assert method == "generate" and params.n == 1
        self.calls.append([list(ids) for ids, _ in items])
        answer = self.script[len(self.calls) - 1]
        rows = [self.tokenizer(answer)["input_ids"] + [1] for _ in items]
        T = max(len(r) for r in rows)
        P = max(len(ids) for ids, _ in items)
        ids_BS = torch.zeros(len(items), P + T, dtype=torch.long)
        attn_BS = torch.zeros_like(ids_BS)
        mask_BT = torch.zeros(len(items), T)
        for b, ((ctx, _), r) in enumerate(zip(items, rows)):
            ids_BS[b, P - len(ctx):P] = torch.tensor(ctx)
            ids_BS[b, P:P + len(r)] = torch.tensor(r)
            attn_BS[b, P - len(ctx):P + len(r)] = 1
            mask_BT[b, :len(r)] = 1
        return RolloutBatch(input_ids_BS=ids_BS, attention_mask_BS=attn_BS, mask_BT=mask_BT,
                            old_logprobs_BT=-0.5 * mask_BT, responses=[answer] * len(items))


class Example:
    def __init__(self, prompt_ids, reference, prompt="p"):
        self.input_ids, self.reference, self.prompt = prompt_ids, reference, prompt


def test_runner_plays_guess_the_number_turn_by_turn():
    from rlhf.models import SamplingParams

    tok = CharTokenizer()
    actor = ScriptedActor(tok, ["4", "6", "5"])  # secret 5: ">" after 4, "<" after 6, hit on 5
    runner = EpisodeRunner("guess_number", {"turn_penalty": 0.25}, max_turns=4, max_tokens=64, tokenizer=tok)
    batch = runner.run(actor, [Example([30, 31], "5")], SamplingParams(max_new_tokens=4, n=2, seed=3), seed=3)
    assert len(batch) == 2 and batch.group_ids_B.tolist() == [0, 0]
    # turn 2's context is the prompt, the policy's first turn and the environment's ">" answer
    gt = tok(">")["input_ids"]
    assert actor.calls[1][0] == [30, 31] + tok("4")["input_ids"] + [1] + gt
    row = batch.input_ids_BS[0][batch.attention_mask_BS[0].bool()].tolist()
    assert row == [30, 31, *tok("4")["input_ids"], 1, *gt, *tok("6")["input_ids"], 1, *tok("<")["input_ids"],
                   *tok("5")["input_ids"], 1]
    assert batch.mask_BT[0].tolist() == [1, 1, 0, 1, 1, 0, 1, 1]
    assert batch.scores_B.tolist() == [0.5, 0.5]  # hit on the 3rd turn: 1 - 2 x 0.25
    assert batch.gold_B.tolist() == [1.0, 1.0]
    assert batch.turn_rewards_BT[0].tolist() == [0, 0, 0, 0, 0, 0, 0, 0.5]
    assert batch.extra["episode/end_done"] == 2 and batch.extra["episode/turns_mean"] == 3
    assert batch.extra["episode/env_tokens_mean"] == 2 and batch.extra["episode/env_gold"] == 1.0


def test_runner_end_reasons_max_turns_max_tokens_and_env_error():
    from rlhf.models import SamplingParams

    tok = CharTokenizer()
    params = SamplingParams(max_new_tokens=4, n=1, seed=0)
    runner = EpisodeRunner("guess_number", {}, max_turns=2, max_tokens=64, tokenizer=tok)
    batch = runner.run(ScriptedActor(tok, ["1", "2"]), [Example([30], "9")], params, seed=0)
    assert batch.extra["episode/end_max_turns"] == 1 and batch.scores_B.tolist() == [0.0]
    assert batch.gold_B.tolist() == [0.0]

    short = EpisodeRunner("guess_number", {}, max_turns=5, max_tokens=3, tokenizer=tok)
    batch = short.run(ScriptedActor(tok, ["1", "2", "3"]), [Example([30], "9")], params, seed=0)
    assert batch.extra["episode/end_max_tokens"] == 1 and batch.truncated_B.tolist() == [True]
    assert batch.mask_BT.shape[1] <= 3 + params.max_new_tokens - 1


def test_an_environment_that_raises_ends_its_episode_with_env_error_and_the_batch_goes_on(monkeypatch):
    from rlhf.envs import guess_number
    from rlhf.models import SamplingParams

    def explode(self, action):
        if self.secret == 3:
            raise RuntimeError("env crashed")
        return StepResult(None, 1.0, True, {"gold": 1.0})

    monkeypatch.setattr(guess_number.GuessNumberEnv, "step", explode)
    tok = CharTokenizer()
    runner = EpisodeRunner("guess_number", {}, max_turns=3, max_tokens=64, tokenizer=tok)
    batch = runner.run(ScriptedActor(tok, ["1"]), [Example([30], "3"), Example([31], "4")],
                       SamplingParams(max_new_tokens=4, n=1, seed=0), seed=0)
    assert batch.extra["episode/end_env_error"] == 1 and batch.extra["episode/end_done"] == 1
    assert batch.scores_B.tolist() == [0.0, 1.0]


def test_make_env_names_what_is_wrong():
    with pytest.raises(ValueError, match="unknown environment 'chess'"):
        make_env("chess", "p", None, 0)
    with pytest.raises(ValueError, match="could not be built"):
        make_env("guess_number", "p", "3", 0, difficulty=9)
    with pytest.raises(ValueError, match="the reference must be the secret integer"):
        make_env("guess_number", "p", "three", 0)


def test_a_hanging_environment_ends_its_episode_with_env_timeout_and_the_others_go_on(monkeypatch):
    """One environment sleeps far past the step timeout: its episode ends "env_timeout" (reward 0 for the
    turn), the others finish; a step that returns something else than a StepResult is an env_error."""
    import time as time_module

    from rlhf.envs import guess_number
    from rlhf.models import SamplingParams

    def step(self, action):
        if self.secret == 3:
            time_module.sleep(3600)  # never returns within the test: its daemon thread is abandoned
        if self.secret == 4:
            return {"reward": 1.0}  # not a StepResult
        return StepResult(None, 1.0, True, {"gold": 1.0})

    monkeypatch.setattr(guess_number.GuessNumberEnv, "step", step)
    tok = CharTokenizer()
    runner = EpisodeRunner("guess_number", {}, max_turns=3, max_tokens=64, tokenizer=tok, step_timeout_s=10.0)
    examples = [Example([30], "3"), Example([31], "4"), Example([32], "5")]
    batch = runner.run(ScriptedActor(tok, ["1"]), examples, SamplingParams(max_new_tokens=4, n=1, seed=0), seed=0)
    assert batch.extra["episode/end_env_timeout"] == 1 and batch.extra["episode/end_env_error"] == 1
    assert batch.extra["episode/end_done"] == 1
    assert batch.scores_B.tolist() == [0.0, 0.0, 1.0]


class SharedSecret(EnvGroup):
    """One secret per group, drawn from the group's first seed: the group's episodes play the same game."""

    made = []

    def make(self, prompt, reference, seeds):
        SharedSecret.made.append(list(seeds))
        secret = 1 + seeds[0] % 16
        return [make_env("guess_number", prompt, secret, seed, **self.kwargs) for seed in seeds]


def test_an_env_group_makes_one_prompts_environments_together(monkeypatch):
    from rlhf.envs import base
    from rlhf.models import SamplingParams

    monkeypatch.setitem(base._ENVS, "shared_secret", SharedSecret)
    SharedSecret.made.clear()
    group = make_env_group("shared_secret", "guess 1-16:", None, [7, 8, 9], turn_penalty=0.5)
    assert len(group) == 3 and len({env.secret for env in group}) == 1 and group[0].turn_penalty == 0.5
    # The runner makes each prompt's G environments in one call, with the seeds single environments get.
    tok = CharTokenizer()
    runner = EpisodeRunner("shared_secret", {}, max_turns=1, max_tokens=16, tokenizer=tok)
    SharedSecret.made.clear()
    runner.run(ScriptedActor(tok, ["3"]), [Example([30], None), Example([31], None)], SamplingParams(n=2, seed=1),
               seed=5)
    from rlhf.trainers.episodes import _mix

    assert SharedSecret.made == [[_mix(5, p, k) for k in range(2)] for p in range(2)]


def test_a_bad_env_group_is_refused_naming_it(monkeypatch):
    from rlhf.envs import base

    class TooFew(EnvGroup):
        def make(self, prompt, reference, seeds):
            return [make_env("guess_number", prompt, 3, seeds[0])]

    monkeypatch.setitem(base._ENVS, "too_few", TooFew)
    with pytest.raises(ValueError, match=r"environment group 'too_few' made 1 environments for 2 seeds"):
        make_env_group("too_few", "guess 1-16:", 3, [1, 2])
    class Strict(TooFew):
        def __init__(self, size: int = 1):
            super().__init__(size=size)

    monkeypatch.setitem(base._ENVS, "strict", Strict)
    with pytest.raises(ValueError, match=r"environment group 'strict' could not be built with kwargs \['colour'\]"):
        make_env_group("strict", "guess 1-16:", 3, [1, 2], colour="red")
    assert make_env("too_few", "guess 1-16:", 3, 1).secret == 3  # one environment of a group, alone
