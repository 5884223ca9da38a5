"""Which CPU settings change the training numbers, and what fixing them costs.

A fresh clone on another machine of the same kind trained a different model from the first
steps on. This runs a few real training steps (the default model, image size, batch size,
loss, optimizer and augmentation, on a random cache) once per setting, each in a fresh process
(the kernel choice is made once, at start-up, from the environment), and records the loss
bits, a hash of the first batch and of the final weights, the kernel level torch chose, and
the time per step. Two settings with equal hashes train bit-identical models.

Another processor is emulated by capping each library at a lower instruction set: ATen's
vectorised kernels (``ATEN_CPU_CAPABILITY``), oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA``)
and MKL's matrix products (``MKL_CBWR``).

    python bench/cpu_determinism.py --out bench/cpu_determinism.json [--steps 3 --image-size 64]
    python bench/cpu_determinism.py --out bench/cpu_speed.json --settings "1 thread" \
        "AVX2 pinned, 1 thread" "portable, 1 thread"    # the speed cost at the default size
"""
import argparse
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> (environment, torch threads)
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
# What the train stage pins (dvc.yaml): the AVX2 code paths that every x86-64 processor since
# 2013 (Intel Haswell, AMD Zen) runs alike; MKL on its conditional-numerical-reproducibility path.
AVX2_PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
PORTABLE = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
            "MKL_CBWR": "COMPATIBLE"}
SETTINGS = {
    "2 threads": ({}, 2),
    "2 threads (again)": ({}, 2),
    "1 thread": ({}, 1),
    "1 thread (again)": ({}, 1),
    "1 thread, ATen capped at AVX2": ({"ATEN_CPU_CAPABILITY": "avx2"}, 1),
    "1 thread, oneDNN capped at AVX2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, 1),
    "1 thread, MKL capped at AVX2": ({"MKL_CBWR": "AVX2"}, 1),
    "1 thread, all capped at AVX2 (an AVX2 processor)": (AVX2, 1),
    "AVX2 pinned, 1 thread": (AVX2_PINNED, 1),
    "AVX2 pinned, 1 thread (again)": (AVX2_PINNED, 1),
    "portable, 1 thread": (PORTABLE, 1),
    "portable, 1 thread (again)": (PORTABLE, 1),
    "portable, 2 threads": (PORTABLE, 2),
}


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def child(steps: int, threads: int | None, image_size: int | None) -> dict:
    """A few training steps as the train stage runs them; runs in its own process."""
    import numpy as np
    import torch

    from assurexray.data.cache import ImageCache
    from assurexray.data.datasets import CachedDataset, make_loader, seed_epoch
    from assurexray.data.transforms import train_transform
    from assurexray.params import load_params
    from assurexray.training.loop import Loop, seed_everything, warmup_cosine
    from assurexray.training.losses import build_loss
    from assurexray.training.models import build_model
    from train_throughput import random_cache

    if threads:
        torch.set_num_threads(threads)
    params = load_params("params.yaml")
    tp = dataclasses.replace(params.train, image_size=image_size or params.train.image_size)
    seed_everything(params.seed, tp.deterministic)
    with tempfile.TemporaryDirectory() as tmp:
        cache = ImageCache(random_cache(Path(tmp), tp.batch_size * steps,
                                        params.preprocess.cache_size))
        ids = cache.meta["image_id"].tolist()
        labels = np.arange(len(ids)) % 3
        loader = make_loader(CachedDataset(cache, ids, labels, train_transform(tp, tp.image_size)),
                             tp.batch_size, True, 0, params.seed, True)
        seed_epoch(loader, params.seed, 0)
        batches = list(loader)
        model = build_model(params.model.backbone, 3, dropout=params.model.dropout)
        optimizer = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
        loop = Loop(model, build_loss(tp.loss, [1, 2, 3]), optimizer,
                    warmup_cosine(optimizer, 0, steps), torch.amp.GradScaler("cpu", enabled=False),
                    torch.device("cpu"), False)
        losses = [loop.train_epoch(batches[:1], "step")]  # the first step also sets up kernels
        started = time.perf_counter()
        losses += [loop.train_epoch([batch], "step") for batch in batches[1:]]
        seconds = time.perf_counter() - started
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "losses": [repr(x) for x in losses],
            "first_batch": digest(batches[0][:1]), "weights": digest(model.state_dict().values()),
            "s_per_step": round(seconds / (steps - 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="JSON result")
    parser.add_argument("--steps", type=int, default=5, help="training steps (>= 2)")
    parser.add_argument("--image-size", type=int, help="default: train.image_size")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.child_threads, args.image_size)))
        return
    results = {}
    for name in args.settings:
        env, threads = SETTINGS[name]
        cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps)]
        cmd += ["--child-threads", str(threads)] if threads else []
        cmd += ["--image-size", str(args.image_size)] if args.image_size else []
        out = subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True,
                             text=True).stdout
        results[name] = {"env": env, **json.loads(out.strip().splitlines()[-1])}
        print(f"{name:40s} {json.dumps(results[name])}", flush=True)
    report = {"settings": results, "steps": args.steps,
              "image_size": args.image_size or "train.image_size",
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_average_at_end": os.getloadavg()}}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
