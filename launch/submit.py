#!/usr/bin/env python
"""Submit an rlhf recipe to a running Ray cluster as a Ray job, stream its logs, exit with its status.

The job runs `rlhf recipe=NAME key=value ...` on the cluster's head node, in `--working-dir` (uploaded)
with a runtime environment of pip packages and environment variables (e.g. NCCL settings). This is
`ray job submit` with the recipe's quoting and exit codes done right; no training logic lives here.

    python launch/submit.py --address http://HEAD:8265 --working-dir . \\
        --env NCCL_SOCKET_IFNAME=eth0 --env NCCL_DEBUG=WARN \\
        recipe=quickstart 'stages=[rm,ppo]' ppo.trainer.total_steps=50
    python launch/submit.py --address http://HEAD:8265 --stop rlhf-quickstart-1a2b3c4d

Exit code: 0 when the job SUCCEEDED (or, with `--no-wait`, once it is submitted), 1 FAILED, 2 bad
arguments, 3 STOPPED, 130 interrupted (the job keeps running; stop it with --stop ID).
With token authentication (Ray's default), the client needs RAY_AUTH_MODE=token and the cluster's
token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
EXIT_BAD_ARGS, EXIT_INTERRUPTED = 2, 130
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Never uploaded with the working dir: run outputs, checkpoints, caches and VCS data (Ray refuses
# working dirs over its upload limit, and a directory of checkpoints would exceed it).
DEFAULT_EXCLUDES = [".git", "**/__pycache__", "outputs", "runs", "checkpoints", "wandb", "*.safetensors"]


@dataclass
class Submission:
    """Everything `JobSubmissionClient.submit_job` receives."""

    entrypoint: str  # a shell command line (Ray runs it with a shell)
    runtime_env: dict = field(default_factory=dict)
    submission_id: str = ""
    metadata: dict = field(default_factory=dict)
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None


def parse_env(pairs: list[str]) -> dict[str, str]:
    """["KEY=VALUE", ...] → {KEY: VALUE}; the value may contain '=' and spaces; a bare KEY copies the
    variable from this process's environment (e.g. `--env WANDB_API_KEY`)."""
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"--env {pair!r}: expected KEY=VALUE with KEY a valid variable name")
        if not sep:
            if name not in os.environ:
                raise ValueError(f"--env {name}: not set in this environment (use {name}=VALUE)")
            value = os.environ[name]
        env[name] = value
    return env


def recipe_name(overrides: list[str]) -> str:
    """The NAME of the `recipe=NAME` argument (required, exactly once)."""
    names = [arg.split("=", 1)[1] for arg in overrides if arg.startswith("recipe=")]
    if len(names) != 1 or not names[0]:
        raise ValueError(f"expected exactly one recipe=NAME argument, got {overrides!r}")
    return names[0]


def build_entrypoint(overrides: list[str], command: str = "rlhf") -> str:
    """The job's shell command: `command` followed by every override, each quoted so that the shell
    hands it to `rlhf` as one argument, byte for byte (spaces, brackets, quotes, `$`)."""
    recipe_name(overrides)
    return " ".join([command, *(shlex.quote(arg) for arg in overrides)])


def build_runtime_env(working_dir: str | None = None, pip: list[str] | None = None,
                      env_vars: dict[str, str] | None = None, excludes: list[str] | None = None) -> dict:
    """Ray's runtime_env dict: only the keys that are set (an empty dict = the cluster's environment)."""
    runtime_env: dict = {}
    if working_dir:
        runtime_env["working_dir"] = working_dir
        runtime_env["excludes"] = list(DEFAULT_EXCLUDES if excludes is None else excludes)
    if pip:
        runtime_env["pip"] = list(pip)
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return runtime_env


def build_submission(args: argparse.Namespace) -> Submission:
    """Pure: parsed arguments → the Submission (raises ValueError on bad arguments)."""
    name = recipe_name(args.overrides)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "recipe"
    return Submission(
        entrypoint=build_entrypoint(args.overrides, args.entrypoint_command),
        runtime_env=build_runtime_env(args.working_dir, args.pip, parse_env(args.env), args.exclude),
        submission_id=args.job_id or f"rlhf-{slug}-{uuid.uuid4().hex[:8]}",
        metadata={"recipe": name, "submitted_by": "launch/submit.py"},
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Submit `rlhf recipe=NAME key=value ...` to a Ray cluster and follow it.",
        epilog="Everything after the options is passed to rlhf: recipe=NAME and Hydra overrides.")
    p.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", os.environ.get("RAY_ADDRESS")),
                   help="the cluster's dashboard / job server, e.g. http://HEAD:8265 "
                        "(default: $RAY_DASHBOARD_ADDRESS, then $RAY_ADDRESS)")
    p.add_argument("--working-dir", help="local directory uploaded and used as the job's working dir")
    p.add_argument("--exclude", action="append", default=None,
                   help=f"path pattern not uploaded (repeatable; default {DEFAULT_EXCLUDES})")
    p.add_argument("--pip", action="append", default=[], help="pip requirement installed for the job (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable of the job, e.g. NCCL_SOCKET_IFNAME=eth0 (repeatable); "
                        "a bare KEY copies it from this environment")
    p.add_argument("--job-id", help="submission id (default rlhf-<recipe>-<random>)")
    p.add_argument("--entrypoint-command", default="rlhf", help="the program run with the overrides (default rlhf)")
    p.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the driver process")
    p.add_argument("--entrypoint-num-gpus", type=float, help="GPUs reserved for the driver process")
    p.add_argument("--no-wait", action="store_true", help="submit and exit without following the logs")
    p.add_argument("--stop", metavar="JOB_ID", help="stop this job (and wait until it has stopped)")
    p.add_argument("overrides", nargs="*", help="recipe=NAME key=value ...")
    return p


def submit(client, submission: Submission, retry_s: float = 90.0) -> str:
    """Submit; while the cluster is still starting its job agent (a fresh head, or a SLURM job that
    just registered its nodes), Ray answers "No available agent": retry for up to `retry_s`."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return client.submit_job(entrypoint=submission.entrypoint, runtime_env=submission.runtime_env or None,
                                     submission_id=submission.submission_id, metadata=submission.metadata,
                                     entrypoint_num_cpus=submission.entrypoint_num_cpus,
                                     entrypoint_num_gpus=submission.entrypoint_num_gpus)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def follow(client, job_id: str, poll_s: float = 1.0) -> str:
    """Print the job's logs as they come, then wait for (and return) its terminal status."""
    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    while True:  # the log stream can close a moment before the status turns terminal
        status = str(client.get_job_status(job_id))
        if status in EXIT_CODES:
            return status
        time.sleep(poll_s)


def stop(client, job_id: str, timeout_s: float = 120.0) -> str:
    """Ask Ray to stop `job_id`; wait until it is in a terminal state and return it."""
    client.stop_job(job_id)
    deadline = time.monotonic() + timeout_s
    status = str(client.get_job_status(job_id))
    while status not in EXIT_CODES and time.monotonic() < deadline:
        time.sleep(1.0)
        status = str(client.get_job_status(job_id))
    return status


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.address:
        print("submit.py: no cluster address: pass --address http://HEAD:8265", file=sys.stderr)
        return EXIT_BAD_ARGS
    if not args.stop:
        try:
            submission = build_submission(args)
        except ValueError as exc:
            print(f"submit.py: {exc}", file=sys.stderr)
            return EXIT_BAD_ARGS

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(args.address)
    if args.stop:
        status = stop(client, args.stop)
        print(f"job {args.stop}: {status}")
        return 0 if status in EXIT_CODES else 1
    job_id = submit(client, submission)
    print(f"submitted job {job_id}: {submission.entrypoint}", file=sys.stderr, flush=True)
    if args.no_wait:
        print(f"follow it with: ray job logs --follow --address {args.address} {job_id}", file=sys.stderr)
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\ninterrupted: job {job_id} keeps running; stop it with: "
              f"python launch/submit.py --address {args.address} --stop {job_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"job {job_id}: {status}", file=sys.stderr)
    return EXIT_CODES[status]


if __name__ == "__main__":
    sys.exit(main())
