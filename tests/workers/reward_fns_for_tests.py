"""Module-level reward functions (picklable) used by the reward-runner tests."""
import time


def length_reward(response, reference):
    return float(len(response))


def flaky_reward(response, reference):
    if response == "raise":
        raise RuntimeError("cannot score this")
    if response == "hang":
        time.sleep(60)
    if response == "nan":
        return float("nan")
    return 1.0 if response == reference else 0.0
