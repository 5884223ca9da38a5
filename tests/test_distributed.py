"""DDP on CPU (gloo, 2 processes): exact gradient averaging, and the train stage under
`dvc repro` compared with the 1-process run of the same global batch."""
import json
import shutil
import subprocess

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from assurexray.data.datasets import read_split
from assurexray.evaluation.metrics import classification_metrics
from assurexray.inference.runner import load_for_inference, predict_images
from assurexray.param_checks import check_ranges
from assurexray.params import Params, ParamsError, TrainParams
from assurexray.training import distributed
from assurexray.training.distributed import Dist
from assurexray.training.loop import Loop, warmup_cosine
from assurexray.training.losses import build_loss
from assurexray.training.models import build_model
from test_end_to_end import run
from tiny_project import make_project

WORLD, PER_RANK = 2, 4


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(WORLD * PER_RANK, 3, 32, 32, generator=gen),
            torch.arange(WORLD * PER_RANK) % 3)


def one_step(ddp: Dist, images, labels) -> tuple[dict, float]:
    """The project's own training step on one batch; the gradients it left and its loss."""
    torch.manual_seed(0)
    # LayerNorm, not BatchNorm: batch statistics would differ between the two halves on CPU,
    # where torch has no SyncBatchNorm (on GPUs the wrapper converts BatchNorm to it).
    model = build_model("convnext_atto", 3, dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loop = Loop(ddp.wrap(model, torch.device("cpu")), build_loss("ce", [1, 1, 1], 0.0), optimizer,
                warmup_cosine(optimizer, 0, 1), torch.amp.GradScaler("cpu", enabled=False),
                torch.device("cpu"), False, ddp=ddp)
    loss = loop.train_epoch([(images, labels)], "step")
    return {name: p.grad.clone() for name, p in model.named_parameters()}, loss


def _rank(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    images, labels = batch()
    part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    grads, loss = one_step(Dist(rank, WORLD), images[part], labels[part])
    if rank == 0:
        torch.save({"grads": grads, "loss": loss}, out)
    dist.destroy_process_group()


def test_ddp_step_averages_gradients_like_one_process_on_the_combined_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_rank, args=(f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=WORLD)
    ddp = torch.load(out, weights_only=True)
    single_grads, single_loss = one_step(Dist(), *batch())
    assert set(ddp["grads"]) == set(single_grads)
    worst = max((ddp["grads"][k] - g).abs().max().item() for k, g in single_grads.items())
    assert worst <= 1e-6, f"largest gradient difference {worst:.2e}"
    assert any(g.abs().max() > 1e-3 for g in single_grads.values())  # not trivially zero
    assert ddp["loss"] == pytest.approx(single_loss, abs=1e-6)


@pytest.mark.parametrize("preset, threads", [(None, "1"), ("3", "3")])
def test_relaunch_uses_a_private_rendezvous_and_shares_the_cores(monkeypatch, preset, threads):
    seen = {}

    def fake_run(cmd, env, check):
        seen.update(cmd=cmd, env=env)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(distributed.subprocess, "run", fake_run)
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 2)
    if preset is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", preset)
    assert distributed.relaunch(2, "stages/train.py", ["--params", "p.yaml"]) == 0
    assert seen["cmd"][1:] == ["-m", "torch.distributed.run", "--standalone",
                               "--nproc-per-node=2", "stages/train.py", "--params", "p.yaml"]
    assert seen["env"]["OMP_NUM_THREADS"] == threads


def test_global_batch_must_split_evenly():
    with pytest.raises(ParamsError, match="'train.batch_size' must be a multiple of train.devices"):
        check_ranges(Params(train=TrainParams(batch_size=15, devices=2)))


# --- the train stage under dvc repro, 1 and 2 processes --------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A tiny project trained with 1, then (as an experiment) 2 gloo processes, global batch
    16: {devices: folder holding that run's dvclive/train}; the workspace keeps the DDP run."""
    # Plain CE: a class-weighted mean normalises by each process's own weight sum.
    root = make_project(tmp_path_factory.mktemp("ddp"),
                        {"data": {"synthetic": {"n_images": 160}},
                         # the model the tolerances below were measured on: DDP's mechanics,
                         # not the initial weights, are under test
                         "model": {"backbone": "resnet18", "init": "scratch"},
                         "train": {"epochs": 6, "patience": 0, "loss": "ce"}})
    run(["dvc", "repro", "train"], root)
    single = tmp_path_factory.mktemp("single")
    shutil.copytree(root / "dvclive", single / "dvclive")
    run(["dvc", "exp", "run", "-S", "train.devices=2", "train"], root)
    return {1: single, 2: root}


def history(root, metric: str = "train_loss") -> list[float]:
    rows = (root / f"dvclive/train/plots/metrics/{metric}.tsv").read_text().split()[2:]
    return [float(v) for v in rows[1::2]]


def test_ddp_run_learns_and_saves_a_plain_checkpoint(runs):
    root = runs[2]
    losses = history(root)
    assert losses[-1] < losses[0], f"train loss did not fall: {losses}"
    payload = torch.load(root / "models/model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in payload["state_dict"])
    assert payload["meta"]["params"]["train"]["devices"] == 2
    assert not (root / "models/last/last.pt.tmp").exists()
    assert "up to date" in run(["dvc", "status", "train"], root).lower()


def test_ddp_validation_equals_a_recomputation_from_the_checkpoint(runs):
    root = runs[2]
    model, meta, cache, transform, device = load_for_inference(root / "models/model.pt",
                                                               root / "data/cache")
    ids, labels = read_split(root / "data/splits/val.csv", meta.classes)
    preds = predict_images(model, cache, ids, labels, meta.classes, transform, 16, device)
    probs = preds.to_frame()[[f"prob_{c}" for c in meta.classes]].to_numpy()
    recomputed = classification_metrics(labels, probs, range(len(meta.classes)))["macro_auc"]
    logged = json.loads((root / "dvclive/train/metrics.json").read_text())
    assert logged["best_val_macro_auc"] == pytest.approx(recomputed, abs=1e-5)
    assert len(ids) == len(set(ids)) and len(ids) >= 10


def test_ddp_figures_are_close_to_the_single_process_run(runs):
    """Both runs share the initialisation (DDP copies rank 0's), the global batch, the number
    of steps and the schedule. They differ in BatchNorm statistics (per half batch on CPU,
    which has no SyncBatchNorm), the shuffle (DistributedSampler) and the augmentation
    streams. Measured here: train loss within 3.4% at every epoch (means over ~110 images),
    final validation loss within 8.8% (22 images); so 6% and 12%. Validation AUC is not
    compared: on 22 images of a model this close to chance it moves by 0.3 between epochs."""
    for metric, tolerance in (("train_loss", 0.06), ("val_loss", 0.12)):
        one, two = history(runs[1], metric), history(runs[2], metric)
        assert len(one) == len(two) == 6
        steps = range(len(one)) if metric == "train_loss" else [-1]
        for step in steps:
            assert two[step] == pytest.approx(one[step], rel=tolerance), (metric, one, two)
