"""Micro-batching for the server: concurrent requests share one padded forward.

Request threads submit ``(history, options)`` and wait; one worker thread takes the first waiting
request, collects whatever else arrives within ``max_wait`` seconds (up to ``max_batch``), and runs
the pipeline once per distinct option set on the batch. One client sees no extra wait beyond
``max_wait``; many clients get the throughput of batched calls (the forward's cost is its tokens,
the per-call overhead is paid once per batch).
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable


class MicroBatcher:
    def __init__(self, run: Callable[..., list[Any]], *, max_batch: int = 16, max_wait: float = 0.002) -> None:
        self._run = run                      # run(histories, **options) -> one result per history
        self._queue: queue.Queue = queue.Queue()
        self.max_batch = max_batch
        self.max_wait = max_wait
        threading.Thread(target=self._loop, name="behavior-lm-batcher", daemon=True).start()

    def submit(self, history: Any, options: dict[str, Any]) -> Any:
        future: Future = Future()
        self._queue.put((history, options, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                left = deadline - time.perf_counter()
                try:
                    batch.append(self._queue.get(timeout=max(left, 0)) if left > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            groups: dict[tuple, list] = {}
            for item in batch:
                groups.setdefault(tuple(sorted(item[1].items())), []).append(item)
            for key, items in groups.items():
                try:
                    results = self._run([h for h, _, _ in items], **dict(key))
                except Exception as exc:                       # each request gets the error
                    if len(items) == 1:
                        items[0][2].set_exception(exc)
                        continue
                    for h, options, future in items:           # find whose input failed
                        try:
                            future.set_result(self._run([h], **options)[0])
                        except Exception as one:
                            future.set_exception(one)
                    continue
                for (_, _, future), result in zip(items, results):
                    future.set_result(result)
