"""Memory layout on a CPU: training steps and inference of the configured backbone in PyTorch's
default (contiguous) layout against channels-last, rounds alternated so that other load hits
both alike. Decides ``train.channels_last`` and the layout inference loads checkpoints in.

    python bench/layout_speed.py --out bench/layout_speed.json
"""
import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from assurexray.params import load_params
from assurexray.training.models import build_model

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def train_rate(model, images, labels, optimizer, steps: int) -> float:
    model.train()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return steps * len(images) / (time.perf_counter() - started)


@torch.inference_mode()
def eval_rate(model, images, repeats: int) -> float:
    model.eval()
    model(images)   # warm-up: first-call allocations
    started = time.perf_counter()
    for _ in range(repeats):
        model(images)
    return repeats * len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="JSON result")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="training steps per round")
    args = parser.parse_args()
    params = load_params(args.params)
    size, batch = params.train.image_size, params.train.batch_size
    torch.manual_seed(0)
    model = build_model(params.model.backbone, 3, init="scratch", dropout=params.model.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    train_x, train_y = torch.randn(batch, 3, size, size), torch.randint(0, 3, (batch,))
    eval_x = torch.randn(64, 3, size, size)
    rates: dict[str, dict[str, list[float]]] = {k: {"train": [], "eval": []} for k in LAYOUTS}
    for _ in range(args.rounds + 1):   # the first round warms up and is dropped
        for name, layout in LAYOUTS.items():
            model.to(memory_format=layout)
            rates[name]["train"].append(train_rate(model, train_x.contiguous(memory_format=layout),
                                                   train_y, optimizer, args.steps))
            rates[name]["eval"].append(eval_rate(model, eval_x.contiguous(memory_format=layout), 3))
    result = {"backbone": params.model.backbone, "image_size": size, "train_batch": batch,
              "eval_batch": 64, "threads": torch.get_num_threads(), "cpu": platform.processor(),
              "load_average": os.getloadavg()[0],
              "images_per_s": {name: {arm: round(statistics.median(v[1:]), 1)
                                      for arm, v in arms.items()} for name, arms in rates.items()}}
    speed = result["images_per_s"]
    result["channels_last_speedup"] = {
        arm: round(speed["channels_last"][arm] / speed["contiguous"][arm], 2) for arm in ("train", "eval")}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
