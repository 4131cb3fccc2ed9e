"""Latency and throughput of `behavior-lm serve` under 1, 8 and 32 concurrent clients.

Usage:
    python scripts/bench_serve.py RUN_DIR [--requests 400] [--clients 1 8 32] [--users 500]

Starts the server in a subprocess on a free loopback port, posts the real test histories of the
run's users (``--users`` of them) as events, then for each concurrency level runs ``--requests``
``POST /recommend {"user": ..., "top_k": 10}`` requests spread over that many client threads (one
keep-alive connection each). Prints p50/p99 latency and requests per second. Loopback only.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(conn: http.client.HTTPConnection, path: str, body: dict) -> dict:
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{path}: {resp.status} {data[:300]!r}")
    return json.loads(data)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--users", type=int, default=500)
    args = parser.parse_args()

    from behavior_lm.arguments import DataArguments
    from behavior_lm.data.pipeline import prepare_data
    from behavior_lm.models.auto import template_for

    run = Path(args.run_dir)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    data = prepare_data(DataArguments.of_run(run),
                        template=template_for(recipe.get("model_type", "gpt2")))
    tok = data.tokenizer
    test = data.datasets["test"].select(range(min(args.users, data.datasets["test"].num_rows)))
    users = {}
    for row in test:
        users[str(row["user_id"])] = [t[2:] for t in tok.convert_ids_to_tokens(row["input_ids"]) if t.startswith("i:")]

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "behavior_lm.cli.main", "serve", str(run), "--port", str(port)],
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        deadline = time.time() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/health")
                conn.getresponse().read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("server did not start")
                time.sleep(0.3)
        events = [{"user": u, "item": i} for u, items in users.items() for i in items]
        for start in range(0, len(events), 5000):
            call(conn, "/events", {"events": events[start:start + 5000]})
        names = list(users)
        print(f"model: {run}; {len(names)} users ({len(events)} events posted); {args.requests} "
              f"POST /recommend (top_k 10) per level; server and clients on one 2-core machine\n")
        print("| clients | p50 (ms) | p99 (ms) | requests/s |")
        print("|---:|---:|---:|---:|")
        for clients in args.clients:
            latencies: list[float] = []
            lock = threading.Lock()
            per_client = args.requests // clients

            def worker(offset: int) -> None:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                mine = []
                for k in range(per_client):
                    user = names[(offset * per_client + k) % len(names)]
                    t0 = time.perf_counter()
                    call(c, "/recommend", {"user": user, "top_k": 10})
                    mine.append((time.perf_counter() - t0) * 1e3)
                with lock:
                    latencies.extend(mine)

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - start
            print(f"| {clients} | {statistics.median(latencies):.1f} | {percentile(latencies, 99):.1f} | "
                  f"{len(latencies) / seconds:,.0f} |")
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
