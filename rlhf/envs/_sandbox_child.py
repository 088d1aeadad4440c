"""The sandbox's child: run one untrusted program's function on the calls in `calls.json` (stdlib only).

Run as `python -I -S _sandbox_child.py WORKDIR` by `rlhf.envs.sandbox` (never imported by the package).
Before the program is compiled this process caps itself (address space, CPU seconds, file size, open
files, no core dumps; hard limit = soft limit) and installs an audit hook that refuses, and records,
what a unit-tested function has no business doing: creating processes, sending signals, networking,
loading native code (ctypes), reading outside the standard library and WORKDIR, writing, renaming or
deleting outside WORKDIR, raising its own limits. Each refusal is written at once to
`violations.txt`, so it is known even when the program then kills itself.

The results (`results.json`, written last) hold each call's return value as JSON, or the error it
raised. Expected values never enter this process: the parent compares, so a program cannot read the
answers from the grader's memory or files.
"""
import json
import os
import resource
import sys

WORKDIR = os.path.realpath(sys.argv[1])
SPEC = json.load(open(os.path.join(WORKDIR, "calls.json"), encoding="utf-8"))
STDLIB = os.path.realpath(os.path.dirname(os.__file__))
VALUE_CHARS = 4096  # a return value's JSON beyond this is cut (and so fails its test)
FORBIDDEN_IMPORTS = frozenset({"ctypes", "_ctypes", "cffi", "gc", "subprocess", "_posixsubprocess", "multiprocessing",
                               "_multiprocessing", "socket", "_socket", "ssl", "_ssl", "pty", "mmap"})
FORBIDDEN_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.startfile",
    "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.sendto", "socket.sendmsg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "sys.addaudithook", "os.setxattr", "os.removexattr", "os.chroot",
})
PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown", "os.truncate",
                         "os.link", "os.symlink", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def apply_limits(limits: dict) -> None:
    """Cap this process: memory is what the program may add to the interpreter's size at start-up."""
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    _limit(resource.RLIMIT_AS, size + int(limits["memory_mb"]) * 2**20)
    cpu = int(limits["cpu_s"]) + 1  # RLIMIT_CPU counts whole seconds; SIGXCPU ends the process
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    _limit(resource.RLIMIT_FSIZE, int(limits["max_output_bytes"]))
    _limit(resource.RLIMIT_NOFILE, 64)
    _limit(resource.RLIMIT_CORE, 0)


def _inside(path, root: str) -> bool:
    if isinstance(path, int):  # an already-open descriptor
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    real = os.path.realpath(os.path.join(WORKDIR, str(path)))
    return real == root or real.startswith(root + os.sep)


def install_policy(record) -> None:
    """The audit hook: a refused event raises PermissionError in the program after `record`ing it."""
    readable = (STDLIB, WORKDIR, os.path.realpath(__file__), "/dev/null", "/dev/urandom")

    def refuse(event: str, detail: str):
        record(f"{event} {detail}"[:300])
        raise PermissionError(f"sandbox: {event} is not allowed ({detail})"[:300])

    def hook(event, args):
        if event == "import":
            if args[0].split(".")[0] in FORBIDDEN_IMPORTS:
                refuse("import", args[0])
        elif event in FORBIDDEN_EVENTS:
            refuse(event, repr(args)[:200])
        elif event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & WRITE_FLAGS)
            roots = (WORKDIR,) if writes else readable
            if not any(_inside(path, root) for root in roots):
                refuse("open", f"{path!r} for {'writing' if writes else 'reading'}")
        elif event in PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, (str, bytes)) and not _inside(path, WORKDIR):
                    refuse(event, repr(path))

    sys.addaudithook(hook)


def run_calls(namespace: dict, entry_point: str, calls: list) -> list:
    fn = namespace.get(entry_point)
    if not callable(fn):
        return [{"error": f"NoEntryPoint: the program defines no function {entry_point!r}"}] * len(calls)
    out = []
    for args in calls:
        try:
            value = fn(*args)
        except MemoryError:
            out.append({"error": "MemoryError"})
            continue
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: one call, one result
            out.append({"error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        try:
            text = json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            out.append({"error": f"Unserializable: returned a {type(value).__name__}"})
            continue
        out.append({"value": text if len(text) <= VALUE_CHARS else None, "truncated": len(text) > VALUE_CHARS})
    return out


def main() -> None:
    violations = open(os.path.join(WORKDIR, "violations.txt"), "a", encoding="utf-8", buffering=1)
    apply_limits(SPEC["limits"])
    install_policy(lambda line: violations.write(line.replace("\n", " ") + "\n"))
    result: dict = {"status": "completed"}
    try:
        code = compile(SPEC["source"], "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        result = {"status": "syntax_error", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    else:
        namespace = {"__name__": "__solution__", "__builtins__": __builtins__}
        try:
            exec(code, namespace)
        except MemoryError:
            result = {"status": "memory", "detail": "MemoryError while loading the program"}
        except BaseException as exc:
            result = {"status": "load_error", "detail": f"{type(exc).__name__}: {exc}"[:300]}
        else:
            result["calls"] = run_calls(namespace, SPEC["entry_point"], SPEC["calls"])
    tmp = os.path.join(WORKDIR, "results.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(WORKDIR, "results.json"))


if __name__ == "__main__":
    main()
    try:  # what the program printed; past the file-size limit this fails, and the parent sees the full file
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(0)  # skip interpreter teardown: the program's atexit handlers and finalizers do not run
