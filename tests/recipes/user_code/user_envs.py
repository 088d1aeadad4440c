"""A user's own environment, outside the rlhf package, given to the real `rlhf` command by dotted path
(tests/recipes/test_recipes_cpu.py runs it from this directory, which is not on sys.path)."""
from rlhf.envs import StepResult


class RetryArithmetic:
    """An arithmetic prompt with a second chance: a wrong answer is answered "=" and the policy tries again.
    Reward 1 for the right answer (in any turn), gold 1 when it was found."""

    def __init__(self, prompt, reference, seed, first_try_bonus=0.0):
        self.answer, self.first_try_bonus, self.turns = str(reference).strip(), float(first_try_bonus), 0

    def reset(self):
        return None

    def step(self, action):
        self.turns += 1
        if action.strip() == self.answer:
            bonus = self.first_try_bonus if self.turns == 1 else 0.0
            return StepResult(None, 1.0 + bonus, True, {"gold": 1.0, "first_try": float(self.turns == 1)})
        return StepResult("=", 0.0, False, {"gold": 0.0, "first_try": 0.0})
