"""Cost as the work grows: a queued DVC experiment grid over input size x backbone, and the
generated `reports/scaling.md` (table, accuracy-per-training-minute frontier, DVC plot data).

    python bench/scaling.py run --sizes 96 128 192 256 \
        --backbones efficientnet_b0 resnet18 mobilenetv3_large_100
    python bench/scaling.py report

`run` queues one experiment per point (`scale-<backbone>-<size>`, up to the analyze stage)
and runs the queue with one worker by default, so the wall-clock timings are not shared
between runs (`--jobs 2` halves the wall time on 2 cores: training is pinned to one thread,
and the frontier uses CPU time, which sharing barely moves); points that already have an
experiment are skipped, so an interrupted grid resumes. `report` reads every
`scale-*` experiment: validation and test macro AUC with grouped bootstrap intervals (the
analyze stage's method; the validation interval is computed here from the experiment's
validation predictions), and the train stage's throughput, epoch time and peak memory.
The frontier is chosen on validation AUC only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dvc.api
import torch
import yaml
from dvc.exceptions import PathMissingError

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.evaluation.bootstrap import bootstrap_metrics, read_groups, read_predictions
from assurexray.params import ModelParams, TrainParams
from assurexray.training.models import build_model

PREFIX = "scale-"
# A preset may give up this much validation AUC for a cheaper run (without a seed spread).
PRESET_SLACK = 0.01
DVC = [sys.executable, "-m", "dvc"]
QUEUE_STATES = ("Queued", "Running", "Success", "Failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    grid = sub.add_parser("run", help="queue and run the grid")
    grid.add_argument("--sizes", type=int, nargs="+", required=True)
    grid.add_argument("--backbones", nargs="+", required=True)
    grid.add_argument("--jobs", type=int, default=1, help="experiments run at once")
    grid.add_argument("--set", dest="fixed", action="append", default=[], metavar="KEY=VALUE",
                      help="an override for every point (dvc exp run -S), repeatable")
    cost = sub.add_parser("cost", help="CPU-seconds per training image, every grid point")
    cost.add_argument("--sizes", type=int, nargs="+", required=True)
    cost.add_argument("--backbones", nargs="+", required=True)
    cost.add_argument("--steps", type=int, default=3)
    cost.add_argument("--out", type=Path, default=Path("bench/scaling_cost.json"))
    report = sub.add_parser("report", help="write reports/scaling.md and the plot data")
    report.add_argument("--out", type=Path, default=Path("reports/scaling.md"))
    report.add_argument("--plots", type=Path, default=Path("plots/scaling"))
    report.add_argument("--json", type=Path, default=Path("bench/scaling.json"))
    report.add_argument("--command", default="", help="the `run` command line, for the doc")
    report.add_argument("--cost", type=Path, default=Path("bench/scaling_cost.json"))
    report.add_argument("--seed-spread", type=Path, default=Path("metrics/seed_spread.json"),
                        help="scripts/seed_spread.sh's output: how far seeds alone move the AUC")
    args = parser.parse_args()
    if args.command == "run":
        return run_grid(args.sizes, args.backbones, args.fixed, args.jobs)
    if args.command == "cost":
        rows = [step_cost(b, s, args.steps) for s in args.sizes for b in args.backbones]
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
        return 0
    rows = [measure(name, sha) for name, sha in experiments().items()]
    cost = json.loads(args.cost.read_text()) if args.cost.exists() else []
    per_image = {(c["backbone"], c["image_size"]): c["cpu_seconds_per_image"] for c in cost}
    for r in rows:  # load-independent cost: CPU time per image x images x epochs
        key = (r["backbone"], r["image_size"])
        r["cpu_minutes"] = (per_image[key] * r["train_images"] * r["epochs"] / 60
                            if key in per_image else None)
    write_report(sorted(rows, key=lambda r: (r["backbone"], r["image_size"])), args, cost)
    return 0


def run_grid(sizes: list[int], backbones: list[str], fixed: list[str], jobs: int) -> int:
    done = experiments()
    for size in sizes:  # smallest first: an interrupted grid still has a curve
        for backbone in backbones:
            name = f"{PREFIX}{backbone}-{size}"
            if name in done:
                continue
            sets = [f"model.backbone={backbone}", f"train.image_size={size}", *fixed]
            run_dvc("exp", "run", "--queue", "-n", name, *(a for s in sets for a in ("-S", s)),
                "analyze")
    # Start the queue's workers and poll: `dvc exp run --run-all` would hold the repository
    # lock for the whole grid, and no other dvc command could run in the workspace meanwhile.
    run_dvc("queue", "start", "--jobs", str(jobs))
    while (status := queue_status()) and any(s in ("Queued", "Running") for s in status.values()):
        time.sleep(30)
    failed = [name for name, state in status.items() if name.startswith(PREFIX) and state == "Failed"]
    for name in failed:
        print(f"{name} failed: `dvc queue logs {name}` shows why", file=sys.stderr)
    return 1 if failed else 0


def queue_status() -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed} from `dvc queue status`."""
    out = subprocess.run([*DVC, "queue", "status"], check=True, capture_output=True,
                         text=True).stdout
    rows = (line.split() for line in out.splitlines()[1:])
    return {row[1]: row[-1] for row in rows if len(row) >= 4 and row[-1] in QUEUE_STATES}


def step_cost(backbone: str, size: int, steps: int, batch: int = 16) -> dict:
    """CPU-seconds per training image (forward, backward, AdamW step) on ONE thread.

    Process CPU time, not wall time: other jobs on a shared machine barely move it, so
    points measured at different moments compare."""
    torch.set_num_threads(1)
    model = build_model(backbone, 3).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.randn(batch, 3, size, size), torch.arange(batch) % 3
    for i in range(steps + 1):  # the first step allocates and is not counted
        if i == 1:
            started = time.process_time()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    cpu = (time.process_time() - started) / (steps * batch)
    print(f"{backbone} {size}px: {cpu * 1000:.1f} CPU-ms per training image", flush=True)
    return {"backbone": backbone, "image_size": size, "cpu_seconds_per_image": cpu}


def experiments() -> dict[str, str]:
    """{experiment name: commit} of every `scale-*` experiment in the repository."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname) %(objectname)",
                          "refs/exps"], check=True, capture_output=True, text=True).stdout
    refs = dict(line.split() for line in out.splitlines())
    return {ref.rsplit("/", 1)[-1]: sha for ref, sha in refs.items()
            if ref.rsplit("/", 1)[-1].startswith(PREFIX)}


def measure(name: str, sha: str) -> dict:
    """One grid point's figures, read from its experiment commit and the DVC cache."""
    params = _yaml(sha, "params.yaml")
    train = json.loads(dvc.api.read("dvclive/train/metrics.json", rev=sha))
    train.update(_resources(sha))
    analysis = json.loads(dvc.api.read("metrics/analysis.json", rev=sha))
    a = params["analysis"]
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("data/splits/groups.csv", "data/predictions/val.csv"):
            (Path(tmp) / Path(part).name).write_text(dvc.api.read(part, rev=sha))
        classes = json.loads(dvc.api.read("data/dataset.json", rev=sha))["classes"]
        n_train = len(dvc.api.read("data/splits/train.csv", rev=sha).splitlines()) - 1
        val = read_predictions(Path(tmp) / "val.csv", classes, read_groups(Path(tmp) / "groups.csv"))
        val_auc = bootstrap_metrics(val, classes, a["bootstrap_iterations"], a["ci_level"],
                                    params["seed"])["macro_auc"]
    epochs = int(train["step"]) + 1   # run; fewer than configured after early stopping
    return {"experiment": name, "backbone": params["model"]["backbone"],
            "image_size": params["train"]["image_size"], "epochs": epochs,
            "configured_epochs": params["train"]["epochs"],
            "val_macro_auc": val_auc, "test_macro_auc": analysis["test"]["macro_auc"],
            "train_images_per_second": train["train_images_per_second"],
            "epoch_seconds": train["epoch_seconds"], "peak_memory_mb": train["peak_memory_mb"],
            "train_minutes": train["epoch_seconds"] * epochs / 60, "train_images": n_train}


def _resources(sha: str) -> dict:
    """Epoch time, throughput and peak memory of the experiment's training: their own file
    (runs made before it existed kept them in metrics.json, read above)."""
    try:
        return json.loads(dvc.api.read("dvclive/train/resources.json", rev=sha))
    except PathMissingError:
        return {}


def cost_key(rows: list[dict]) -> str:
    """CPU minutes (from the `cost` table) when every point has them: wall minutes depend on
    what else ran on the machine."""
    return "cpu_minutes" if all(r.get("cpu_minutes") is not None for r in rows) else "train_minutes"


def frontier(rows: list[dict]) -> list[dict]:
    """Points no other point beats on both cost and validation AUC."""
    key = cost_key(rows)

    def beaten(r):
        return any(o[key] <= r[key]
                   and o["val_macro_auc"]["value"] > r["val_macro_auc"]["value"]
                   for o in rows if o is not r)
    return [r for r in rows if not beaten(r)]


def cpu_preset(rows: list[dict], slack: float) -> dict:
    """The cheapest frontier point within ``slack`` of the best validation AUC."""
    front = frontier(rows)
    best = max(r["val_macro_auc"]["value"] for r in front)
    return min((r for r in front if r["val_macro_auc"]["value"] >= best - slack),
               key=lambda r: r[cost_key(rows)])


def reading(rows: list[dict], spread: dict | None, spread_path: Path) -> list[str]:
    """Where the default configuration sits, and the preset the frontier suggests."""
    default = next((r for r in rows if r["backbone"] == ModelParams().backbone
                    and r["image_size"] == TrainParams().image_size), None)
    slack = preset_slack(spread)
    pick = cpu_preset(rows, slack)
    lines = ["## Reading the curve", ""]
    if default is not None:
        where = ("on the frontier" if default["frontier"] else
                 "below the frontier: " + ", ".join(
                     f"{r['backbone']} at {r['image_size']} px"
                     for r in rows if r["frontier"] and r[cost_key(rows)] <= default[cost_key(rows)]
                     and r["val_macro_auc"]["value"] > default["val_macro_auc"]["value"])
                 + " reach a higher validation AUC in no more training time")
        lines += [f"The default ({default['backbone']} at {default['image_size']} px) is {where}.", ""]
    short = sorted({r["configured_epochs"] for r in rows
                    if r["configured_epochs"] < TrainParams().epochs})
    if short:
        lines += [f"**Runs of {', '.join(map(str, short))} epoch(s), shorter than the default "
                  f"{TrainParams().epochs}: their AUCs rank early learning speed, not where "
                  "training ends; any preset below is provisional until the grid runs in full.**",
                  ""]
    lines += seed_note(spread, spread_path)
    learned = [r for r in rows if r["val_macro_auc"]["value"] > 0.5]
    if len(learned) < 2:
        return lines + ["No CPU preset yet: the grid holds fewer than two points with a "
                        "validation AUC above chance (0.5).", ""]
    lines += [f"CPU preset (cheapest frontier point within {slack:.3f} of the best validation "
              f"AUC): `-S model.backbone={pick['backbone']} -S train.image_size={pick['image_size']}`"
              f" ({pick[cost_key(rows)]:.1f} {cost_key(rows).replace('_', ' ')}, validation AUC "
              f"{pick['val_macro_auc']['value']:.3f}).", ""]
    return lines


def seed_note(spread: dict | None, path: Path) -> list[str]:
    """One run per point: how far a training seed alone moves the default's AUC."""
    if spread is None:
        return ["One run per point, and no seed spread measured (`scripts/seed_spread.sh`): "
                "small AUC differences between points may be seed noise.", ""]
    val, test = spread["val_macro_auc"], spread["test_macro_auc"]
    return [f"One run per point. Training seeds alone move the default's validation macro AUC "
            f"over {val['min']:.3f}-{val['max']:.3f} and its test macro AUC over "
            f"{test['min']:.3f}-{test['max']:.3f} ({len(val['values'])} seeds, `{path}`): points "
            "closer than that are not ranked by this grid, so the preset below is the cheapest "
            f"frontier point within half that validation range ({preset_slack(spread):.3f}) of "
            "the best.", ""]


def preset_slack(spread: dict | None) -> float:
    """How much validation AUC a preset may give up: half the seed-to-seed range when measured."""
    if spread is None:
        return PRESET_SLACK
    return (spread["val_macro_auc"]["max"] - spread["val_macro_auc"]["min"]) / 2


def write_report(rows: list[dict], args, cost: list[dict] = ()) -> None:
    """``args``: out, plots, json, command and seed_spread (a path; absent = not measured)."""
    front = {r["experiment"] for r in frontier(rows)}
    for r in rows:
        r["frontier"] = r["experiment"] in front
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    args.plots.mkdir(parents=True, exist_ok=True)
    points = [{"train_minutes": round(r["train_minutes"], 2),
               "cpu_minutes": None if r.get("cpu_minutes") is None else round(r["cpu_minutes"], 2),
               "val_macro_auc": round(r["val_macro_auc"]["value"], 4),
               "test_macro_auc": round(r["test_macro_auc"]["value"], 4),
               "images_per_second": round(r["train_images_per_second"], 1),
               "run": f"{r['backbone']} {r['image_size']}px"} for r in rows]
    (args.plots / "frontier.json").write_text(json.dumps(points, indent=2) + "\n")
    path = args.seed_spread
    spread = json.loads(path.read_text())["metrics"] if path.exists() else None
    args.out.write_text(render(rows, args.command, spread, path) + render_cost(cost))


def render(rows: list[dict], command: str, spread: dict | None, spread_path: Path) -> str:
    def ci(m):
        return f"{m['value']:.3f} ({m['ci_low']:.3f}-{m['ci_high']:.3f})"
    lines = ["# Cost as the work grows", "",
             "Generated by `bench/scaling.py report` from the `scale-*` DVC experiments; never "
             "edit by hand.", "", f"> {NOT_FOR_CLINICAL_USE}", "",
             "Figures from the synthetic twin are not BTXRD results.", "",
             f"Grid command: `{command or 'python bench/scaling.py run ...'}`, then "
             "`python bench/scaling.py report`. Plot: `dvc plots show plots/scaling/frontier.json`.",
             "", "| backbone | px | epochs run/set | val macro AUC (95% CI) | test macro AUC (95% CI) | "
             "train images/s | epoch s | train min | CPU min | peak MB | frontier (val) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['image_size']} | {r['epochs']}/{r['configured_epochs']} | "
                     f"{ci(r['val_macro_auc'])} | {ci(r['test_macro_auc'])} | "
                     f"{r['train_images_per_second']:.1f} | {r['epoch_seconds']:.0f} | "
                     f"{r['train_minutes']:.1f} | "
                     f"{'' if r.get('cpu_minutes') is None else format(r['cpu_minutes'], '.1f')} | "
                     f"{r['peak_memory_mb']:.0f} | "
                     f"{'yes' if r['frontier'] else ''} |")
    lines += ["", "Wall-clock columns (images/s, epoch s, train min) depend on what else ran on "
              "the machine at the time. CPU min = the CPU cost per image below x training images "
              "x epochs run (compute only, one thread): the frontier uses it when every point has "
              f"it. Fewer epochs run than set: early stopping (`train.patience` = "
              f"{TrainParams().patience} epochs without a validation AUC gain by default).", ""]
    return "\n".join(lines + reading(rows, spread, spread_path)) + "\n"


def render_cost(cost: list[dict]) -> str:
    """CPU-seconds per training image for every backbone x size (`cost` subcommand)."""
    if not cost:
        return ""
    sizes = sorted({c["image_size"] for c in cost})
    backbones = list(dict.fromkeys(c["backbone"] for c in cost))
    value = {(c["backbone"], c["image_size"]): c["cpu_seconds_per_image"] for c in cost}
    lines = ["## Training cost per image, every grid point", "",
             "CPU-milliseconds per training image (forward, backward, AdamW step; batch 16, one "
             "thread, process CPU time): `python bench/scaling.py cost --sizes "
             f"{' '.join(map(str, sizes))} --backbones {' '.join(backbones)}`. An epoch of N "
             "images costs about N x this in CPU time, plus data loading and validation.", "",
             "| backbone | " + " | ".join(f"{s} px" for s in sizes) + " |",
             "| --- |" + " --- |" * len(sizes)]
    for b in backbones:
        lines.append(f"| {b} | " + " | ".join(
            f"{value[(b, s)] * 1000:.0f}" if (b, s) in value else "" for s in sizes) + " |")
    return "\n".join(lines) + "\n"


def run_dvc(*args: str) -> None:
    subprocess.run([*DVC, *args], check=True)


def _yaml(sha: str, path: str) -> dict:
    return yaml.safe_load(subprocess.run(["git", "show", f"{sha}:{path}"], check=True,
                                         capture_output=True, text=True).stdout)


if __name__ == "__main__":
    sys.exit(main())
