"""Forward streams: on a CPU, one single-threaded forward pass per core instead of one pass
spread over the cores.

Torch splits each operator of a forward pass over its intra-op (OpenMP) threads. At the batch
sizes of serving that scales poorly, and after every pass the OpenMP workers spin for a while,
holding the cores that decoding threads need. ``bench/serve_throughput.py`` (batch 8, 2 cores)
measured two single-threaded passes side by side at 219-267 images/s against 139-237 for one
pass on 2 threads, over five runs; at ``predict``'s batch 32 (``bench/predict_throughput.py``)
the two are within the machine's noise (134-158 vs 116-153), and the streams still leave the
decoding threads cores without spinning workers. So ``predict`` and the service run as many
passes side by side as torch had threads, each on one. On a GPU one stream feeds the device
and the thread setting is left alone.
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
