"""Training throughput through the real data path vs. pre-made in-memory tensors.

Both arms run the same model, batch size and training step (training.Loop); the data arm
reads the cache through CachedDataset + train_transform + the configured DataLoader. The
arms alternate so that load from other processes hits both alike. A ratio near 1 means the
data path costs nothing; the budget is ratio >= 0.9.

    python bench/train_throughput.py --out bench/train_throughput.json [--cache data/cache]
"""
import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from assurexray.data.cache import ImageCache, letterbox
from assurexray.data.datasets import CachedDataset, make_loader, seed_epoch
from assurexray.data.transforms import train_transform
from assurexray.params import load_params
from assurexray.training.loop import Loop, seed_everything, warmup_cosine
from assurexray.training.losses import build_loss
from assurexray.training.models import build_model, default_device


def random_cache(root: Path, n: int, size: int) -> Path:
    """A cache of random radiograph-sized images, letterboxed like the preprocess stage."""
    rng = np.random.default_rng(0)
    images, rows = np.zeros((n, size, size), np.uint8), []
    for i in range(n):
        height, width = rng.integers(size, 3 * size, 2)
        out, scale, pad_x, pad_y = letterbox(rng.integers(0, 256, (height, width), np.uint8), size)
        images[i] = out
        rows.append((f"r{i:05d}", i, scale, pad_x, pad_y, width, height))
    np.save(root / "images.npy", images)
    pd.DataFrame(rows, columns=["image_id", "row", "scale", "pad_x", "pad_y", "width", "height"]
                 ).to_csv(root / "meta.csv", index=False)
    (root / "lesions.json").write_text("{}")
    return root


def timed(loop: Loop, batches) -> float:
    started = time.perf_counter()
    loop.train_epoch(batches, "bench")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="JSON result")
    parser.add_argument("--cache", type=Path, help="a preprocess cache (default: random)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=6, help="measured steps per arm and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    params = load_params(args.params)
    tp = params.train
    seed_everything(params.seed, tp.deterministic)
    n_images = tp.batch_size * (args.steps + 1)
    with tempfile.TemporaryDirectory() as tmp:
        cache = ImageCache(args.cache or random_cache(Path(tmp), n_images,
                                                      params.preprocess.cache_size))
        ids = cache.meta["image_id"].tolist()[:n_images]
        if len(ids) < n_images:
            parser.error(f"{args.cache}: {len(ids)} images, the benchmark needs {n_images}")
        labels = np.arange(len(ids)) % 3
        dataset = CachedDataset(cache, ids, labels, train_transform(tp, tp.image_size))
        loader = make_loader(dataset, tp.batch_size, True, tp.num_workers, params.seed, True)
        device = default_device()
        model = build_model(params.model.backbone, 3, dropout=params.model.dropout).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=tp.lr)
        loop = Loop(model, build_loss("ce", [1, 1, 1]).to(device), optimizer,
                    warmup_cosine(optimizer, 0, 10**6), torch.amp.GradScaler(
                        device.type, enabled=device.type == "cuda"), device, device.type == "cuda")
        premade = [next(iter(loader))] * args.steps
        timed(loop, premade[:2])  # warm-up: allocator, kernel selection
        memory_s = data_s = load_s = 0.0
        for round_ in range(args.rounds):
            memory_s += timed(loop, premade)
            seed_epoch(loader, params.seed, round_)
            data_s += timed(loop, itertools.islice(loader, args.steps))
            started = time.perf_counter()  # the loader alone: less exposed to CPU noise
            sum(1 for _ in itertools.islice(loader, args.steps))
            load_s += time.perf_counter() - started
    images = tp.batch_size * args.steps * args.rounds
    result = {
        "data_path_images_per_s": images / data_s, "in_memory_images_per_s": images / memory_s,
        "ratio": memory_s / data_s, "loader_only_images_per_s": images / load_s,
        "backbone": params.model.backbone,
        "image_size": tp.image_size, "batch_size": tp.batch_size, "num_workers": tp.num_workers,
        "steps": args.steps * args.rounds, "cache": str(args.cache or "random (temporary)"),
        "torch_threads": torch.get_num_threads(), "device": str(device),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
