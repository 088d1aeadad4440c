"""A user's own task and reward function, outside the rlhf package, given to the real `rlhf` command by
dotted path (tests/recipes/test_recipes_cpu.py runs it from this directory, which is not on sys.path)."""
import re


class EvenAnswerTask:
    """Gold = 1 when the response is a single even integer (whatever the prompt): a verifier no built-in
    task has, so the run's gold metric can only come from here."""

    name = "even_answer"

    def __init__(self, **kwargs):
        self.kwargs = kwargs  # the recipe's task kwargs (the arithmetic task's): accepted, unused

    def reward(self, response, reference):
        match = re.fullmatch(r"\s*(-?\d+)\s*(<eos>)?\s*", response)
        return float(match is not None and int(match.group(1)) % 2 == 0)

    def write_files(self, out_dir):
        raise NotImplementedError("this task has no data of its own: the run's prompts come from elsewhere")


def short_answer_reward(response, reference):
    """1 for an answer of at most 2 characters (end-of-sequence marker aside), else 0."""
    return float(len(response.replace("<eos>", "").strip()) <= 2)
