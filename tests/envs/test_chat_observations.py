"""Environment turns rendered with the model's chat template (`ppo.env.observations=chat`, issue 13):
an episode's text — prompt, policy turns ending in EOS, observations — is exactly the chat template's
rendering of the conversation with the policy's turns as assistant messages. Checked on ChatML (the
tiny BPE tokenizer), Mistral 7B's real template and tokenizer, and the tiny character template; a
template that cannot host environment turns is refused naming why."""
import pytest
import torch

from rlhf.data.batch import RolloutBatch
from rlhf.data.encode import _MARKER, chat_observation, chat_turn_end, render_prompt
from rlhf.models import load_tokenizer
from rlhf.models.public_vocab import build_mistral_tokenizer
from rlhf.models.tiny import build_tiny_bpe_tokenizer, build_tiny_tokenizer
from rlhf.trainers.episodes import EpisodeRunner

TURNS = ["(12+34)", "=46 ", "46"]  # policy, environment, policy


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    out = {}
    for name, build in (("chatml", build_tiny_bpe_tokenizer), ("mistral", build_mistral_tokenizer),
                        ("tiny", build_tiny_tokenizer)):
        path = tmp_path_factory.mktemp(name)
        build(path)
        out[name] = load_tokenizer(str(path), padding_side="left")
    return out


@pytest.mark.parametrize("name", ["chatml", "mistral", "tiny"])
def test_an_episodes_text_is_the_templates_rendering_of_the_conversation(tokenizers, name):
    tok = tokenizers[name]
    prompt, _ = render_prompt(tok, "12+34=", use_chat_template=True)
    policy, observation, last = TURNS
    # what a policy samples for a content: the template's text before it (Mistral: a space), the content,
    # the end-of-turn token
    generation = tok.apply_chat_template([{"role": "user", "content": "U"}], tokenize=False, add_generation_prompt=True)
    base = tok.apply_chat_template([{"role": "user", "content": "U"}, {"role": "assistant", "content": _MARKER}],
                                   tokenize=False)
    lead, end = base[len(generation):base.index(_MARKER)], chat_turn_end(tok)
    assert end == {"chatml": "<|im_end|>", "mistral": "</s>", "tiny": tok.eos_token}[name]
    episode = prompt + lead + policy + end + chat_observation(tok, observation) + lead + last + end
    conversation = [{"role": "user", "content": "12+34="}, {"role": "assistant", "content": policy},
                    {"role": "user", "content": observation}, {"role": "assistant", "content": last}]
    expected = tok.apply_chat_template(conversation, tokenize=False)
    assert expected == episode or expected == episode + "\n"  # ChatML adds a newline after the last turn's end


class Actor:
    """Answers every context with the next scripted turn of the given tokenizer, ending in EOS (or not)."""

    def __init__(self, tok, script, eos=True):
        self.tok, self.script, self.eos, self.contexts = tok, list(script), eos, []

    def call(self, method, items, params):
        self.contexts.append([list(ids) for ids, _ in items])
        text = self.script[len(self.contexts) - 1]
        end = self.tok.convert_tokens_to_ids("<|im_end|>")  # what a ChatML model stops on
        row = self.tok(text, add_special_tokens=False)["input_ids"] + ([end] if self.eos else [])
        P = max(len(ids) for ids, _ in items)
        ids = torch.zeros(len(items), P + len(row), dtype=torch.long)
        for b, (ctx, _) in enumerate(items):
            ids[b, P - len(ctx):P] = torch.tensor(ctx)
            ids[b, P:] = torch.tensor(row)
        attention = (torch.arange(P + len(row)) >= 0).long().expand(len(items), -1).clone()
        mask = torch.ones(len(items), len(row))
        return RolloutBatch(input_ids_BS=ids, attention_mask_BS=attention, mask_BT=mask,
                            old_logprobs_BT=-0.5 * mask, responses=[text] * len(items))


class Example:
    def __init__(self, ids, reference):
        self.input_ids, self.reference, self.prompt = ids, reference, "guess 1-16:"


@pytest.mark.parametrize("eos", [True, False])
def test_the_runner_places_chat_observations_after_each_policy_turn(tokenizers, eos):
    from rlhf.models import SamplingParams

    tok = tokenizers["chatml"]
    prompt_ids = tok(render_prompt(tok, "guess 1-16:", use_chat_template=True)[0], add_special_tokens=False)["input_ids"]
    runner = EpisodeRunner("guess_number", {}, max_turns=2, max_tokens=64, tokenizer=tok, observations="chat")
    actor = Actor(tok, ["4", "5"], eos=eos)
    batch = runner.run(actor, [Example(prompt_ids, 5)], SamplingParams(max_new_tokens=4, n=1, seed=0), seed=0)
    second_context = tok.decode(actor.contexts[1][0])
    assert second_context.endswith("4<|im_end|>\n<|im_start|>user\n><|im_end|>\n<|im_start|>assistant\n")
    # a turn cut off before its EOS is closed by one before the observation (the mask: not sampled)
    sampled = batch.mask_BT[0].tolist()
    assert sampled.count(0.0) == len(tok(chat_observation(tok, ">"), add_special_tokens=False)["input_ids"]) + (0 if eos else 1)


def test_a_template_that_cannot_host_environment_turns_is_refused(tokenizers):
    tok = tokenizers["chatml"]
    original = tok.chat_template
    try:
        tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # no EOS after a turn
        with pytest.raises(ValueError, match="does not end an assistant turn with a special token"):
            chat_observation(tok, "x")
        with pytest.raises(ValueError, match="does not end an assistant turn"):
            EpisodeRunner("guess_number", {}, max_turns=2, max_tokens=8, tokenizer=tok, observations="chat")
    finally:
        tok.chat_template = original
