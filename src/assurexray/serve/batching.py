"""Micro-batching: concurrent requests share one forward pass.

A request announces itself on arrival (``incoming``), prepares its input (decoding), puts it
in the queue and waits on a future. Each of ``streams`` worker threads (``inference.streams``:
one per core on a CPU) takes the first waiting input and gathers a batch of its share of the
requests under way, ceil(open requests / streams) up to ``max_batch``: whatever is queued,
plus, for at most ``wait_s``, those still being decoded. A lone request therefore never waits
for companions; under load the requests split evenly over the streams, each running one
forward pass for its share while the others' clients send their next requests.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

import numpy as np

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Submit = Callable[[np.ndarray], Future]   # prepared input -> future of one forward's rows


class QueueFull(Exception):
    """More requests are waiting than the queue holds (the service answers 503)."""


class MicroBatcher:
    def __init__(self, forward: Forward, max_batch: int, wait_s: float, queue_size: int,
                 on_batch: Callable[[int], None] = lambda size: None, streams: int = 1):
        self.forward, self.max_batch, self.wait_s = forward, max_batch, wait_s
        self.queue_size, self.streams = queue_size, streams
        self.on_batch = on_batch   # told the size of every forward pass (metrics)
        self._items: deque[tuple[np.ndarray, Future]] = deque()
        self._changed = threading.Condition()
        self._open = 0        # requests announced and not yet answered
        self._preparing = 0   # of those, not yet queued
        self._stopping = False
        self.threads = [threading.Thread(target=self._run, name=f"micro-batcher-{i}", daemon=True)
                        for i in range(streams)]
        for thread in self.threads:
            thread.start()

    @contextmanager
    def incoming(self) -> Iterator[Submit]:
        """The span of one request, from its arrival to its answer. Yields its ``submit``:
        prepared input -> future of (logits row, embedding row); QueueFull when full."""
        queued = False

        def submit(pixels: np.ndarray) -> Future:
            nonlocal queued
            future = self._enqueue(pixels)
            queued = True
            return future

        with self._changed:
            self._open += 1
            self._preparing += 1
        try:
            yield submit
        finally:
            with self._changed:
                self._open -= 1
                if not queued:   # refused before the queue (bad input, queue full)
                    self._preparing -= 1
                self._changed.notify_all()

    def _enqueue(self, pixels: np.ndarray) -> Future:
        future: Future = Future()
        with self._changed:
            if len(self._items) >= self.queue_size:
                raise QueueFull
            self._items.append((pixels, future))
            self._preparing -= 1
            self._changed.notify_all()
        return future

    def close(self) -> None:
        """Stop once the queued requests are answered."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self.threads:
            thread.join(timeout=30)

    def _gather(self) -> list | None:
        """The next batch, or None when stopping with nothing queued."""
        with self._changed:
            while not self._items and not self._stopping:
                self._changed.wait()
            if not self._items:
                return None
            batch = [self._items.popleft()]
            share = min(self.max_batch, math.ceil(self._open / self.streams))
            deadline = time.monotonic() + self.wait_s
            while len(batch) < share:
                if self._items:
                    batch.append(self._items.popleft())
                    continue
                left = deadline - time.monotonic()
                if self._preparing <= 0 or left <= 0:
                    break
                self._changed.wait(left)
            return batch

    def _run(self) -> None:
        while (gathered := self._gather()) is not None:
            batch = [item for item in gathered if item[1].set_running_or_notify_cancel()]
            if not batch:
                continue
            self.on_batch(len(batch))
            try:
                logits, embeddings = self.forward(np.stack([pixels for pixels, _ in batch]))
            except Exception as exc:  # the requests get the error; the worker keeps serving
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for i, (_, future) in enumerate(batch):
                future.set_result((logits[i], embeddings[i]))
