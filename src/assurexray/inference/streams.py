"""Forward streams: on a CPU, one single-threaded forward pass per core instead of one pass
spread over the cores.

Torch splits each operator of a forward pass over its intra-op (OpenMP) threads. At the batch
sizes of prediction and serving that scales poorly, and after every pass the OpenMP workers
spin for milliseconds, holding the cores that decoding threads need. Measured on 2 cores
(eager EfficientNet-B0, 128 px, batch 8): one pass on 2 threads 121 images/s, two concurrent
passes on 1 thread each 237-263 (``bench/predict_throughput.py`` and ``serve_throughput.py``
record both ceilings). So ``predict`` and the service run as many passes side by side as torch
had threads, each on one. On a GPU one stream feeds the device and the thread setting is left
alone.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def forward_streams(device: torch.device) -> Iterator[int]:
    """Within the block torch runs one intra-op thread per calling thread; yields how many
    concurrent forward streams fill the machine (the thread count it had; 1 on a GPU).

    Torch's thread count is process-wide: it is restored when the block ends.
    """
    if device.type != "cpu":
        yield 1
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)
