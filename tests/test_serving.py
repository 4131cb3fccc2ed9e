"""`behavior-lm serve`: a real server process, a real HTTP client (urllib), the tiny ml-100k run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from transformers import pipeline

import behavior_lm  # noqa: F401  (registers the pipeline)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``behavior-lm serve`` in a subprocess on a free loopback port."""

    def __init__(self, run: Path, state: Path | None = None) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "behavior_lm.cli.main", "serve", str(run), "--port", str(self.port)]
        if state is not None:
            cmd += ["--state_file", str(state)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()[-3000:]}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start in 120 s")

    def request(self, method: str, path: str, body=None) -> tuple[int, dict]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def get(self, path: str) -> tuple[int, dict]:
        return self.request("GET", path)

    def post(self, path: str, body) -> tuple[int, dict]:
        return self.request("POST", path, body)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    state = tmp_path_factory.mktemp("serve") / "state.jsonl"
    srv = Server(tiny_run, state)
    yield srv, state
    srv.stop()


def test_events_then_recommend_equals_the_pipeline(server, tiny_run):
    srv, _ = server
    status, health = srv.get("/health")
    assert status == 200 and health["status"] == "ok" and health["events_kept_per_user"] > 0
    assert srv.post("/events", {"user": "alice", "item": "50"})[0] == 200
    status, reply = srv.post("/events", {"events": [{"user": "alice", "item": 172}, {"user": "alice", "item": "133"},
                                                     {"user": "bob", "item": "no-such-item"}]})
    assert status == 200 and reply["accepted"] == 3 and reply["unknown_items"] == ["no-such-item"]
    status, got = srv.post("/recommend", {"user": "alice", "top_k": 5})
    assert status == 200 and got["user"] == "alice" and got["history_length"] == 3
    want = pipeline("next-behavior", model=str(tiny_run))(["50", "172", "133"], top_k=5)
    assert [r["item"] for r in got["items"]] == [r["item"] for r in want]
    assert [r["score"] for r in got["items"]] == pytest.approx([r["score"] for r in want], abs=1e-5)
    status, given = srv.post("/recommend", {"history": [{"item": "50"}, {"item": 172}, {"item": "133"}], "top_k": 5})
    assert status == 200 and given["items"] == got["items"]
    assert "openapi" in srv.get("/openapi.json")[1]


def test_histories_are_bounded_by_what_the_model_reads(server):
    srv, _ = server
    keep = srv.get("/health")[1]["events_kept_per_user"]
    items = [str(i) for i in (1, 2, 3, 4, 5, 7, 8, 9, 11, 12)] * 10
    assert srv.post("/events", {"events": [{"user": "carol", "item": i} for i in items]})[0] == 200
    got = srv.post("/recommend", {"user": "carol", "top_k": 3})[1]
    assert got["history_length"] == min(len(items), keep)
    assert got["items"] == srv.post("/recommend", {"history": [{"item": i} for i in items[-keep:]], "top_k": 3})[1]["items"]


@pytest.mark.parametrize("path,body,code", [
    ("/recommend", {"user": "nobody"}, 404),
    ("/recommend", {}, 422),                                           # neither user nor history
    ("/recommend", {"user": "alice", "history": []}, 422),             # both
    ("/recommend", {"user": "alice", "top_k": 0}, 422),
    ("/recommend", {"user": "alice", "top_k": "ten"}, 422),
    ("/recommend", {"user": "alice", "behavior": "buy"}, 400),         # not a behavior of this model
    ("/recommend", {"user": "alice", "surprise": 1}, 422),
    ("/events", {"user": "", "item": "1"}, 422),
    ("/events", {"events": []}, 422),
    ("/events", {"user": "x"}, 422),
    ("/events", b"{not json", 422),
    ("/events", {"user": "x", "item": "a b"}, 400),                     # an id is one token
    ("/events", {"user": "x", "item": 1.5}, 422),
])
def test_bad_requests_get_a_4xx_with_a_message_never_a_500(server, path, body, code):
    srv, _ = server
    status, reply = srv.post(path, body)
    assert status == code, reply
    assert status == 200 or reply.get("detail")


def test_restart_keeps_the_histories(server, tiny_run):
    srv, state = server
    before = srv.post("/recommend", {"user": "alice", "top_k": 5})[1]
    assert state.is_file() and "alice" in state.read_text()
    again = Server(tiny_run, state)
    try:
        after = again.post("/recommend", {"user": "alice", "top_k": 5})[1]
        assert after["items"] == before["items"] and after["history_length"] == before["history_length"]
    finally:
        again.stop()


def test_concurrent_requests_are_batched_and_answer_as_alone(server):
    """Requests that arrive together share a forward (micro-batching); each still gets its own answer."""
    import threading

    srv, _ = server
    users = [f"user{k}" for k in range(12)]
    srv.post("/events", {"events": [{"user": u, "item": str(1 + (k * 7 + j) % 40)} for k, u in enumerate(users)
                                    for j in range(3 + k)]})
    alone = {u: srv.post("/recommend", {"user": u, "top_k": 4})[1]["items"] for u in users}
    got: dict = {}

    def ask(u: str) -> None:
        got[u] = srv.post("/recommend", {"user": u, "top_k": 4})[1]["items"]

    threads = [threading.Thread(target=ask, args=(u,)) for u in users * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for u in users:
        assert [r["item"] for r in got[u]] == [r["item"] for r in alone[u]]
        assert [r["score"] for r in got[u]] == pytest.approx([r["score"] for r in alone[u]], abs=1e-5)
