"""Scores from an HTTP reward service: a judge model or a shared reward server instead of a local RM.

Protocol (one POST per chunk of at most `batch_size` rows, JSON both ways):

    request  {"prompts": [str], "responses": [str], "references": [any]}   # references: task answers or null
    response {"scores": [float]}                                           # one per row, in order

Chunks are sent `max_concurrency` at a time. A chunk that fails in a way that may pass (no connection,
a timeout, HTTP 429 or 5xx) is retried up to `max_retries` times after `backoff_s × 2^attempt` seconds.
A reply that can never be right (HTTP 4xx, malformed JSON, no `scores` list, a wrong number of scores,
a score that is not a number) is not retried. Every row that gets no usable score is given the fallback
score and counted, with its reason, in the same three kinds as a rule-based reward function
(`reward_fn.FAILURE_KINDS`: errors, timeouts, non_finite), so the per-step `reward/fn_*` metrics, the
summary totals and `reward_role.max_fn_failure_frac` cover the server too. Nothing is mis-scored
silently: a row's score is either the server's finite number for that row or a counted fallback.
"""
from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from rlhf.workers.reward_fn import RewardFnStats

logger = logging.getLogger(__name__)

CODES = {"errors": 1, "timeouts": 2, "non_finite": 3}  # as reward_fn.RewardFunctionRunner.failure_codes


@dataclass(frozen=True)
class RewardServerSpec:
    """Where the service is and how hard to try (ppo.reward_role.server_*)."""

    url: str
    timeout_s: float = 30.0  # per request
    max_retries: int = 3  # retries of one chunk after a transient failure
    backoff_s: float = 0.5  # first retry's wait; doubled after each
    batch_size: int = 64  # rows per request
    max_concurrency: int = 4  # requests in flight at once
    fallback: float = 0.0  # the score of a row the server did not score


class _Transient(Exception):
    """A failure worth retrying; `kind` is what it counts as once the retries are spent."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class _Permanent(Exception):
    """A reply that retrying will not fix (counted as an error)."""


class RewardServerClient:
    """Scores (prompt, response, reference) rows with a reward service; counts what it could not score."""

    def __init__(self, spec: RewardServerSpec) -> None:
        self.spec = spec
        self.stats = RewardFnStats()
        self.requests = 0  # POSTs sent, retries included
        self._lock = threading.Lock()  # chunks run in threads: counts are updated under it
        self._last_codes: list[int] = []

    def __call__(self, prompts: Sequence[str], responses: Sequence[str],
                 references: Sequence[Any] | None = None) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        references = list(references) if references is not None else [None] * len(prompts)
        size = self.spec.batch_size
        starts = list(range(0, len(prompts), size))
        chunks = [(s, list(prompts[s:s + size]), list(responses[s:s + size]), references[s:s + size]) for s in starts]
        with ThreadPoolExecutor(max_workers=max(1, min(self.spec.max_concurrency, len(chunks)))) as pool:
            results = list(pool.map(lambda chunk: self._score_chunk(*chunk), chunks))
        scores, self._last_codes = [], []
        for chunk_scores, chunk_codes in results:
            scores += chunk_scores
            self._last_codes += chunk_codes
        return scores

    def failure_codes(self) -> list[int]:
        """Per row of the last call: 0 = the server's score, else 1 error / 2 timeout / 3 non-finite."""
        return list(self._last_codes)

    # --- one chunk -----------------------------------------------------------------------------
    def _score_chunk(self, start: int, prompts, responses, references) -> tuple[list[float], list[int]]:
        rows = f"rows {start}-{start + len(prompts) - 1}"
        body = json.dumps({"prompts": prompts, "responses": responses,
                           "references": [_jsonable(r) for r in references]}).encode()
        attempt = 0
        while True:
            try:
                return self._parse(self._post(body), len(prompts), rows)
            except _Permanent as error:
                return self._give_up("errors", f"{rows}: {error}", len(prompts))
            except _Transient as error:
                if attempt == self.spec.max_retries:
                    return self._give_up(error.kind, f"{rows}: {error} (after {attempt} retries)", len(prompts))
                time.sleep(self.spec.backoff_s * 2 ** attempt)
                attempt += 1

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(self.spec.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with self._lock:
            self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.spec.timeout_s) as reply:
                return reply.read()
        except urllib.error.HTTPError as error:
            reason = f"HTTP {error.code} from {self.spec.url}"
            if error.code == 429 or error.code >= 500:
                raise _Transient("errors", reason) from None
            raise _Permanent(reason) from None
        except (socket.timeout, TimeoutError) as error:
            raise _Transient("timeouts", f"no reply from {self.spec.url} within {self.spec.timeout_s} s") from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, (socket.timeout, TimeoutError)):
                raise _Transient("timeouts", f"no reply from {self.spec.url} within {self.spec.timeout_s} s") from None
            raise _Transient("errors", f"cannot reach {self.spec.url}: {error.reason}") from None
        except (ConnectionError, OSError) as error:
            raise _Transient("errors", f"connection to {self.spec.url} failed: {error}") from None

    def _parse(self, raw: bytes, n: int, rows: str) -> tuple[list[float], list[int]]:
        try:
            reply = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _Permanent(f"malformed JSON from {self.spec.url}: {raw[:80]!r}") from None
        scores = reply.get("scores") if isinstance(reply, dict) else None
        if not isinstance(scores, list):
            raise _Permanent(f"the reply from {self.spec.url} has no 'scores' list: {str(reply)[:80]}")
        if len(scores) != n:
            raise _Permanent(f"{self.spec.url} returned {len(scores)} scores for {n} rows")
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
            bad = next(s for s in scores if not isinstance(s, (int, float)) or isinstance(s, bool))
            raise _Permanent(f"{self.spec.url} returned a score that is not a number: {bad!r}")
        out, codes = [], []
        for i, score in enumerate(scores):
            if math.isfinite(score):
                out.append(float(score))
                codes.append(0)
            else:
                with self._lock:
                    self.stats.record("non_finite", f"{rows}, row {i}: score {score}")
                out.append(self.spec.fallback)
                codes.append(CODES["non_finite"])
        return out, codes

    def _give_up(self, kind: str, description: str, n: int) -> tuple[list[float], list[int]]:
        logger.warning("reward server: %s; %d rows get the fallback score %s", description, n, self.spec.fallback)
        with self._lock:
            self.stats.record(kind, description, count=n)
        return [self.spec.fallback] * n, [CODES[kind]] * n


def _jsonable(value: Any) -> Any:
    """A task reference as JSON: itself when it serialises, else its text."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)
