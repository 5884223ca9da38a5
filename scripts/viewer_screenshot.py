#!/usr/bin/env python3
"""Screenshot of the web viewer on a real prediction (for the README).

Starts `assurexray serve` on a free loopback port, uploads IMAGE in headless Chromium exactly as
the browser test does, checks the bars equal the API's probabilities, saves the screenshot.

    python scripts/viewer_screenshot.py IMAGE --out docs/images/viewer.png [--checkpoint models/calibrated.pt
        --reference models/reference.npz]
"""
import argparse
import sys
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from serve_helpers import ServedModel, predict_in_browser, running_server, stop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/viewer.png"))
    parser.add_argument("--checkpoint", type=Path, default=Path("models/calibrated.pt"))
    parser.add_argument("--reference", type=Path, default=Path("models/reference.npz"))
    args = parser.parse_args()
    served = ServedModel(args.checkpoint.resolve(), args.reference.resolve(), {}, [])
    log = args.out.with_suffix(".server.log")
    with running_server(served, log) as (base, proc):
        shown = predict_in_browser(base, args.image.resolve(), args.out)
        api = httpx.post(base + "/predict", files={"file": ("x", args.image.read_bytes())},
                         timeout=120).json()
        stop(proc)
    log.unlink()
    probs = api.get("calibrated_probs", api["probs"])
    assert all(abs(shown["probs"][k] - v) < 1e-12 for k, v in probs.items()), (shown, probs)
    print(f"{args.out}: {api['pred']}, {probs}, OOD {api['ood']}")


if __name__ == "__main__":
    main()
