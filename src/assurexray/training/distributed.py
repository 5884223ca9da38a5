"""Data-parallel training through torch.distributed: launch, process group, sharding, gathering.

``train.devices > 1`` makes the train stage re-run itself under torchrun (``--standalone``: a
private rendezvous on a free port, so two jobs on one machine never collide), one process per
device: NCCL on GPUs, gloo on CPU. Multi-node runs are the same stage command started by
torchrun with its rendezvous flags on every node. Single-process training uses the same code
with ``Dist()`` (rank 0 of 1), where every collective is a no-op.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from dvclive import Live
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from assurexray.data.datasets import CachedDataset, ReseedableDataset, make_loader

log = logging.getLogger(__name__)


def under_torchrun() -> bool:
    """True inside a process started by torchrun (it exports the rank variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cores_per_process() -> int:
    """This process's share of the CPU cores: all of them, or 1/world size under torchrun."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1")))


def relaunch(devices: int, script: str, argv: list[str]) -> int:
    """Run ``script argv`` as ``devices`` torchrun processes on this machine; their exit code."""
    env = dict(os.environ)
    # torchrun pins every process to one OpenMP thread unless told otherwise; on CPU give each
    # process its share of the cores instead (an explicit OMP_NUM_THREADS wins).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={devices}", script, *argv]
    log.info("launching %d processes: %s", devices, " ".join(cmd))
    return subprocess.run(cmd, env=env, check=False).returncode


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; the default is a single process."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP around ``model`` (already on ``device``); SyncBatchNorm where torch has it (GPU)."""
        if not self.active:
            return model
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[device.index])
        return DistributedDataParallel(model)

    def live(self, live_dir) -> contextlib.AbstractContextManager:
        """dvclive on rank 0; the other ranks log into a stand-in that keeps nothing."""
        if self.main:
            return Live(str(live_dir), dvcyaml=False, save_dvc_exp=False)
        return contextlib.nullcontext(_NoLive())

    def train_loader(self, dataset: CachedDataset, batch_size: int, num_workers: int,
                     seed: int) -> DataLoader:
        """Shuffled batches; with several processes each gets a disjoint share of every epoch
        and ``batch_size`` (the global batch) is split evenly between them."""
        per_process = batch_size // self.world
        shard = -(-len(dataset) // self.world)  # DistributedSampler pads to equal shards
        # A last batch of one image would break BatchNorm's batch statistics.
        drop_last = shard % per_process == 1
        if not self.active:
            return make_loader(dataset, per_process, True, num_workers, seed, drop_last=drop_last)
        sampler: DistributedSampler = DistributedSampler(cast(Dataset, dataset), self.world, self.rank,
                                                         shuffle=True, seed=seed)
        return make_loader(dataset, per_process, False, num_workers, seed, drop_last, sampler)

    def eval_loader(self, dataset: CachedDataset, batch_size: int, num_workers: int,
                    seed: int) -> DataLoader:
        """Every ``world``-th image from ``rank`` on, unpadded, so gathering counts each once."""
        if not self.active:
            return make_loader(dataset, batch_size, False, num_workers, seed)
        rows = range(self.rank, len(dataset), self.world)
        return make_loader(dataset, batch_size // self.world, False, num_workers, seed,
                           sampler=list(rows))

    def set_epoch(self, loader: DataLoader, seed: int, epoch: int) -> None:
        """Epoch ``epoch``'s shuffle (the sampler's seed + epoch) and this rank's augmentation."""
        if not self.active:
            return
        cast(DistributedSampler, loader.sampler).set_epoch(epoch)
        rank_seed = int(np.random.SeedSequence([seed, epoch, self.rank]).generate_state(1)[0])
        loader.generator.manual_seed(rank_seed)
        cast(ReseedableDataset, loader.dataset).reseed(rank_seed)

    def gather(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor concatenated over the ranks (rank order); every rank gets the result."""
        if not self.active:
            return list(tensors)
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, [t.cpu() for t in tensors])
        return [torch.cat([p[i] for p in parts]).to(tensors[i].device)
                for i in range(len(tensors))]

    def mean(self, total: float, count: int) -> float:
        """``sum(total) / sum(count)`` over the ranks."""
        if not self.active:
            return total / count
        sums: list[Any] = [None] * self.world
        dist.all_gather_object(sums, (total, count))
        return sum(t for t, _ in sums) / sum(c for _, c in sums)

    def from_main(self, value):
        """Rank 0's ``value`` on every rank (one reader of a file, one decision)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def start(device_type: str) -> Dist:
    """Join the torchrun job this process belongs to (or stay single) and pick the backend."""
    if not under_torchrun():
        return Dist()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if rank != 0:  # one log: rank 0 speaks for the job
        logging.getLogger().setLevel(logging.WARNING)
    return Dist(rank, world, local_rank)


def process_device(d: Dist, default: torch.device) -> torch.device:
    """This process's device: its local GPU under torchrun, else ``default``."""
    if d.active and default.type == "cuda":
        return torch.device("cuda", d.local_rank)
    return default


def precision(device: torch.device, config) -> tuple[bool, torch.dtype, bool]:
    """(autocast on, its dtype, channels_last) from ``train.precision`` and
    ``train.channels_last``: autocast on a GPU only (a CPU always trains in fp32); the
    channels-last layout on either (on a CPU it trains EfficientNet-Lite0 1.4x faster)."""
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return gpu and config.precision != "fp32", dtype, config.channels_last


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP, whose state dict has no ``module.`` prefixes."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class _NoLive:
    """What the non-zero ranks log into."""
    def __init__(self):
        self.summary = {}

    def log_metric(self, *args, **kwargs) -> None:
        pass

    def next_step(self) -> None:
        pass
