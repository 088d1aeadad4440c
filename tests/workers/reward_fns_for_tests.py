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


def greedy_reward(response, reference):
    """'alloc': asks for 4 GiB; 'spin': burns CPU in 4 threads for up to 60 s; 'fork': starts a
    `sleep` that outlives the call (its pid written to the file named by `reference`), then hangs."""
    if response == "alloc":
        block = bytearray(4 * 2**30)
        return float(len(block))
    if response == "spin":
        import threading
        import time

        def burn():
            end = time.monotonic() + 60
            while time.monotonic() < end:
                pass

        threads = [threading.Thread(target=burn, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        burn()
        return 0.0
    if response == "fork":
        import subprocess
        import time

        child = subprocess.Popen(["sleep", "300"])
        with open(reference, "w") as f:
            f.write(str(child.pid))
        time.sleep(60)
    return 1.0
