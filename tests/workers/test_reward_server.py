"""The reward-server client against a real HTTP server on 127.0.0.1 (issue 15 §3): right scores in row
order, bounded retries of transient failures, and every unscored row counted with its reason —
slow replies, HTTP 500, malformed JSON, a wrong number of scores, non-numbers, NaN, no server at all."""
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf.workers.reward_server import RewardServerClient, RewardServerSpec

PROMPTS = [f"{a}+{b}=" for a, b in ((1, 2), (30, 4), (5, 5), (12, 13))]
RIGHT = ["3", "34", "10", "25"]


def correct(prompt: str, response: str) -> float:
    a, b = map(int, re.search(r"(\d+)\+(\d+)=", prompt).groups())
    return 1.0 if response.strip() == str(a + b) else 0.0


class ScoringServer(ThreadingHTTPServer):
    """Scores arithmetic; the request path picks a misbehaviour. Records requests and peak concurrency."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests, self.in_flight, self.peak, self.lock = [], 0, 0, threading.Lock()
        self.failures_left = {"/flaky": 2}

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code: int, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the /slow case)

    def do_POST(self):
        server = self.server
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append((self.path, request))
            server.in_flight += 1
            server.peak = max(server.peak, server.in_flight)
        try:
            self.respond(request)
        finally:
            with server.lock:
                server.in_flight -= 1

    def respond(self, request):
        path, server = self.path, self.server
        scores = [correct(p, r) for p, r in zip(request["prompts"], request["responses"])]
        if path == "/slow":
            time.sleep(3)
        elif path == "/concurrent":
            time.sleep(0.3)
        elif path == "/error500":
            return self.reply(500, b'{"error": "boom"}')
        elif path == "/bad_request":
            return self.reply(400, b'{"error": "no"}')
        elif path == "/flaky":
            with server.lock:
                fail = server.failures_left["/flaky"] > 0
                server.failures_left["/flaky"] -= 1
            if fail:
                return self.reply(503, b"busy")
        elif path == "/malformed":
            return self.reply(200, b"{scores: oops")
        elif path == "/wrong_count":
            scores = scores[:-1]
        elif path == "/not_a_number":
            scores[0] = "high"
        elif path == "/nan":
            return self.reply(200, json.dumps({"scores": [float("nan")] + scores[1:]}).encode())
        self.reply(200, json.dumps({"scores": scores}).encode())


@pytest.fixture
def server():
    srv = ScoringServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def client(url, **kw):
    spec = dict(timeout_s=120.0, max_retries=2, backoff_s=0.0, batch_size=64, max_concurrency=4, fallback=-1.0)
    return RewardServerClient(RewardServerSpec(url=url, **{**spec, **kw}))


def test_scores_come_back_per_row_in_order_across_chunks(server):
    c = client(server.url + "/score", batch_size=3)
    responses = ["3", "33", "10", "25", "3", "0"]
    scores = c(PROMPTS + PROMPTS[:2], responses, references=[None] * 6)
    assert scores == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert c.failure_codes() == [0] * 6 and c.requests == 2
    sent = sorted((r for _, r in server.requests), key=lambda r: r["prompts"][0] != PROMPTS[0])
    assert sent[0]["responses"] == responses[:3] and sent[0]["references"] == [None] * 3


def test_transient_failures_are_retried_then_scored(server):
    c = client(server.url + "/flaky", max_retries=2)
    assert c(PROMPTS, RIGHT) == [1.0] * 4
    assert c.requests == 3 and c.failure_codes() == [0] * 4 and c.stats.errors == 0


@pytest.mark.parametrize("path, kind, retried, reason", [
    ("/error500", "errors", True, "HTTP 500"),
    ("/bad_request", "errors", False, "HTTP 400"),
    ("/malformed", "errors", False, "malformed JSON"),
    ("/wrong_count", "errors", False, "returned 3 scores for 4 rows"),
    ("/not_a_number", "errors", False, "not a number: 'high'"),
    ("/slow", "timeouts", True, "within 0.5 s"),
])
def test_a_chunk_the_server_did_not_score_gets_the_fallback_counted_with_its_reason(server, path, kind, retried,
                                                                                  reason):
    # only /slow is meant to time out (it answers after 3 s); the others get room on a loaded machine
    c = client(server.url + path, timeout_s=0.5 if path == "/slow" else 120.0, max_retries=1)
    assert c(PROMPTS, RIGHT) == [-1.0] * 4
    code = {"errors": 1, "timeouts": 2}[kind]
    assert c.failure_codes() == [code] * 4
    assert getattr(c.stats, kind) == 4 and sum(getattr(c.stats, k) for k in ("errors", "timeouts", "non_finite")) == 4
    assert c.requests == (2 if retried else 1)
    assert reason in c.stats.examples[0] and "rows 0-3" in c.stats.examples[0]


def test_a_non_finite_score_falls_back_on_its_row_only(server):
    c = client(server.url + "/nan")
    assert c(PROMPTS, RIGHT) == [-1.0, 1.0, 1.0, 1.0]
    assert c.failure_codes() == [3, 0, 0, 0] and c.stats.non_finite == 1 and c.stats.errors == 0


def test_requests_in_flight_stay_within_the_concurrency_limit(server):
    c = client(server.url + "/concurrent", batch_size=1, max_concurrency=2)
    assert c(PROMPTS * 2, RIGHT * 2) == [1.0] * 8
    assert server.peak == 2 and c.requests == 8


def test_no_server_listening_is_counted_as_errors_naming_the_url():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = client(f"http://127.0.0.1:{port}/score", max_retries=1)
    assert c(PROMPTS, RIGHT) == [-1.0] * 4
    assert c.stats.errors == 4 and f"127.0.0.1:{port}" in c.stats.examples[0] and c.requests == 2
