"""A user's own environment, outside the rlhf package, given to the real `rlhf` command by dotted path
(tests/recipes/test_recipes_cpu.py runs it from this directory, which is not on sys.path)."""
from rlhf.envs import EnvGroup, StepResult


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


class RetryArithmeticGroup(EnvGroup):
    """The same environment made as a group (rlhf.envs.EnvGroup): one prompt's episodes are built together
    and each reports the size of its group, so the run shows the group was used."""

    def make(self, prompt, reference, seeds):
        return [SizedRetry(prompt, reference, seed, group_size=len(seeds), **self.kwargs) for seed in seeds]


class SizedRetry(RetryArithmetic):
    def __init__(self, prompt, reference, seed, group_size, first_try_bonus=0.0):
        super().__init__(prompt, reference, seed, first_try_bonus)
        self.group_size = group_size

    def step(self, action):
        result = super().step(action)
        result.metrics["group_size"] = float(self.group_size)
        return result
