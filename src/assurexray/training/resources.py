"""What a training run cost: throughput, epoch time and peak memory.

These are the figures `reports/scaling.md` compares across input sizes and backbones. They go to
their own file (``RESOURCES_FILE`` beside dvclive's metrics), never into ``metrics.json``: they
change on every run, and a stage reading metrics.json (report) would rerun after an identical
retraining.
"""
from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESOURCES_FILE = "resources.json"


@dataclass
class Stopwatch:
    """Seconds spent per phase ('train', 'val') in the epochs this process ran."""
    seconds: dict[str, list[float]] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds.setdefault(name, []).append(time.perf_counter() - started)

    def summary(self, train_images: int, device: torch.device) -> dict:
        """Mean epoch time, training images per second (all processes) and peak memory;
        empty when no epoch ran here (a replayed, finished run)."""
        train = self.seconds.get("train", [])
        if not train:
            return {}
        val = self.seconds.get("val", [0.0])
        return {"epoch_seconds": sum(train) / len(train) + sum(val) / len(val),
                "train_images_per_second": train_images * len(train) / sum(train),
                "peak_memory_mb": peak_memory_mb(device)}


def write_resources(live_dir: str | Path, summary: dict) -> None:
    """``summary`` (``Stopwatch.summary``) as ``live_dir/RESOURCES_FILE``; a note when no epoch
    ran in this process."""
    figures = summary or {"note": "no epoch ran in this process (a finished run replayed)"}
    path = Path(live_dir) / RESOURCES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on a GPU, else the process's peak resident set (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
