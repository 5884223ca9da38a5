"""Micro-batching: concurrent requests share one forward pass.

Request threads put their prepared input on a bounded queue and wait on a future. One worker
thread takes the first waiting input, gathers whatever else is already queued or arrives
within ``wait_s`` (up to ``max_batch``), and runs one forward pass for all of them. A lone
request therefore waits at most ``wait_s`` extra; under load the queue is never empty when the
worker returns, so batches form without waiting and latency stays close to one batch time.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import torch

Forward = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]
_STOP = object()


class QueueFull(Exception):
    """More requests are waiting than the queue holds (the service answers 503)."""


class MicroBatcher:
    def __init__(self, forward: Forward, max_batch: int, wait_s: float, queue_size: int,
                 on_batch: Callable[[int], None] = lambda size: None):
        self.forward, self.max_batch, self.wait_s = forward, max_batch, wait_s
        self.on_batch = on_batch   # told the size of every forward pass (metrics)
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self.thread.start()

    def submit(self, tensor: torch.Tensor) -> Future:
        """A future of (logits row, embedding row); QueueFull when the queue is full."""
        future: Future = Future()
        try:
            self.queue.put_nowait((tensor, future))
        except queue.Full as exc:
            raise QueueFull from exc
        return future

    def close(self) -> None:
        self.queue.put(_STOP)
        self.thread.join(timeout=30)

    def _gather(self, first) -> list:
        batch = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                self.queue.put(_STOP)   # finish this batch, stop on the next turn
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while (first := self.queue.get()) is not _STOP:
            batch = [item for item in self._gather(first) if item[1].set_running_or_notify_cancel()]
            if not batch:
                continue
            self.on_batch(len(batch))
            try:
                logits, embeddings = self.forward(torch.stack([tensor for tensor, _ in batch]))
            except Exception as exc:  # the requests get the error; the worker keeps serving
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for i, (_, future) in enumerate(batch):
                future.set_result((logits[i], embeddings[i]))
