"""rlhf.envs — environments the policy acts in, and the sandbox that runs the programs it writes.

    from rlhf.envs.sandbox import Program, run_programs
    [result] = run_programs([Program("def add(a, b):\n    return a + b\n", "add", (([1, 2], 3),))])
    result.reason, result.score     # "passed", 1.0
"""
