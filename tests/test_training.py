"""Losses, transforms, datasets and the training loop (tiny CPU configurations)."""
import json
import logging
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from assurexray.data.cache import ImageCache
from assurexray.data.datasets import CachedDataset, make_loader, read_split, seed_epoch
from assurexray.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, reseed, train_transform
from assurexray.params import ModelParams, Params, TrainParams
from assurexray.training import loop as training
from assurexray.training.loop import Loop, SplitData, train_classifier, warmup_cosine
from assurexray.training.losses import FocalLoss, build_loss, inverse_frequency_weights
from assurexray.training.models import build_model

CLASSES = ["Normal", "Benign", "Malignant"]
N_IMAGES, CACHE_SIZE = 30, 64


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> ImageCache:
    """A cache in the preprocess stage's on-disk format; each class has its own pattern."""
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (N_IMAGES, CACHE_SIZE, CACHE_SIZE), dtype=np.uint8)
    for row in range(N_IMAGES):
        if row % 3 == 1:
            images[row, 20:44, 20:44] += 150
        elif row % 3 == 2:
            images[row, :, ::8] += 150
    np.save(root / "images.npy", images)
    ids = [f"img{row:03d}" for row in range(N_IMAGES)]
    pd.DataFrame({"image_id": ids, "row": range(N_IMAGES), "scale": 1.0, "pad_x": 0, "pad_y": 0,
                  "width": CACHE_SIZE, "height": CACHE_SIZE}).to_csv(root / "meta.csv", index=False)
    (root / "lesions.json").write_text("{}")
    return ImageCache(root)


def split(rows) -> SplitData:
    return SplitData([f"img{r:03d}" for r in rows], np.asarray(rows) % 3)


TRAIN, VAL = range(0, 18), range(18, 30)
PARAMS = Params(seed=3, model=ModelParams(backbone="resnet18", init="scratch"),
                train=TrainParams(image_size=32, batch_size=8, epochs=2, warmup_epochs=1,
                                  num_workers=0))


# --- losses -------------------------------------------------------------------------------

def test_focal_with_gamma_zero_is_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(16, 3, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    assert torch.allclose(FocalLoss(0.0)(logits, target), F.cross_entropy(logits, target))
    assert FocalLoss(2.0)(logits, target) < F.cross_entropy(logits, target)


def test_inverse_frequency_weights_balance_the_classes():
    counts = [60, 30, 10]
    weights = inverse_frequency_weights(counts)
    contributions = weights * torch.tensor(counts, dtype=torch.float32)
    assert torch.allclose(contributions, contributions[0].expand(3))
    assert float((weights * torch.tensor(counts)).sum() / sum(counts)) == pytest.approx(1.0)
    assert torch.equal(build_loss("weighted_ce", counts).weight, weights)
    assert build_loss("ce", counts).weight is None
    assert build_loss("focal", counts, 0.5).gamma == 0.5
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        build_loss("weighted_ce", [5, 0, 3])
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge", counts)


def test_warmup_then_cosine_per_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=4, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] > 0


# --- transforms and data ------------------------------------------------------------------

def test_eval_transform_normalizes_gray_into_three_channels():
    out = eval_transform(32)(image=np.full((64, 64), 128, np.uint8))["image"]
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)


def test_train_transform_flips_left_right_never_up_down():
    image = np.zeros((64, 64), np.uint8)
    image[:24, :24] = 255  # bright top-left corner
    transform = train_transform(TrainParams(clahe=True), 32)
    reseed(transform, 0)
    outs = [transform(image=image)["image"][0] for _ in range(40)]
    assert all(o[:16].mean() > o[16:].mean() for o in outs)  # top stays on top
    assert any(o[:, 16:].mean() > o[:, :16].mean() for o in outs)  # sometimes mirrored
    reseed(transform, 0)
    assert all(torch.equal(a, transform(image=image)["image"][0]) for a in outs)


def test_dataset_reads_cache_rows(tiny_cache):
    ids = ["img004", "img001"]
    dataset = CachedDataset(tiny_cache, ids, np.array([1, 1]), eval_transform(32))
    image, label = dataset[0]
    assert label == 1
    assert torch.equal(image, eval_transform(32)(image=tiny_cache.images[4])["image"])
    assert CachedDataset(tiny_cache, ids, None, eval_transform(32))[1][1] == -1
    with pytest.raises(KeyError, match="nope"):
        CachedDataset(tiny_cache, ["img001", "nope"], None, eval_transform(32))


def test_read_split(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("image_id,group,label\na,g1,Malignant\nb,g2,Normal\n")
    ids, labels = read_split(path, CLASSES)
    assert ids == ["a", "b"] and labels.tolist() == [2, 0]
    path.write_text("image_id,group,label\na,g1,Tumour\n")
    with pytest.raises(ValueError, match=r"train\.csv: labels \['Tumour'\]"):
        read_split(path, CLASSES)
    path.write_text("image_id,group\na,g1\n")
    with pytest.raises(ValueError, match="lacks columns"):
        read_split(path, CLASSES)


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_batches_depend_only_on_seed_and_epoch(tiny_cache, workers):
    data = split(range(12))
    dataset = CachedDataset(tiny_cache, data.image_ids, data.labels,
                            train_transform(TrainParams(), 32))
    loader = make_loader(dataset, 4, shuffle=True, num_workers=workers, seed=1)

    def epoch(e):
        seed_epoch(loader, 1, e)
        return [torch.cat([x.flatten(), y.float()]) for x, y in loader]

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


# --- the loop -----------------------------------------------------------------------------

def test_one_training_step_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model("resnet18", 3, dropout=0.0)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 3
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loop = Loop(model, criterion, optimizer, warmup_cosine(optimizer, 0, 10),
                torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), amp=False)

    def loss():  # train mode: BatchNorm uses this batch's statistics both times
        with torch.no_grad():
            return criterion(model(images), labels).item()

    model.train()
    before = loss()
    loop.train_epoch([(images, labels)], "step")
    assert loss() < before


def run(cache, tmp_path, name):
    out = tmp_path / name
    model, meta = train_classifier(PARAMS, cache, CLASSES, split(TRAIN),
                                   split(VAL), out / "last", out / "live")
    return model, meta, out


@pytest.fixture(scope="module")
def reference(tiny_cache, tmp_path_factory):
    """One uninterrupted 2-epoch run."""
    return run(tiny_cache, tmp_path_factory.mktemp("reference"), "a")


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


def test_run_logs_metrics_and_is_reproducible(tiny_cache, tmp_path, reference):
    model, meta, out = reference
    metrics = json.loads((out / "live" / "metrics.json").read_text())
    assert {"train_loss", "val_loss", "val_macro_auc", "val_accuracy", "lr"} <= set(metrics)
    assert metrics["step"] == 1 and metrics["best_epoch"] == meta.epoch
    assert len((out / "live/plots/metrics/val_macro_auc.tsv").read_text().splitlines()) == 3
    saved = torch.load(out / "last" / "last.pt", weights_only=True)
    assert saved["state"]["finished"] and len(saved["state"]["history"]) == 2
    assert meta.best_val_macro_auc == max(r["val_macro_auc"] for r in saved["state"]["history"])
    again, _, _ = run(tiny_cache, tmp_path, "b")
    assert same_weights(model, again)


def test_default_recipe_uses_every_core_and_reruns_bit_identical(tiny_cache, tmp_path, monkeypatch):
    """The shipped init (packaged ImageNet weights) on all cores: same machine, same weights."""
    params = replace(PARAMS, model=ModelParams())
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    seen: list[int] = []
    first, meta = train_classifier(params, tiny_cache, CLASSES, split(TRAIN), split(VAL),
                                   tmp_path / "a" / "last", tmp_path / "a" / "live")
    again, _ = train_classifier(params, tiny_cache, CLASSES, split(TRAIN), split(VAL),
                                tmp_path / "b" / "last", tmp_path / "b" / "live")
    assert seen == [os.cpu_count(), os.cpu_count()]
    assert same_weights(first, again)
    assert meta.weights["init"] == "package" and meta.mean == [0.5, 0.5, 0.5]


def test_resume_after_a_crash_continues_at_the_next_epoch(tiny_cache, tmp_path, reference,
                                                           monkeypatch, caplog):
    save = Loop.save

    def save_then_crash(self, *args):
        save(self, *args)
        raise KeyboardInterrupt  # killed right after the first epoch was saved

    monkeypatch.setattr(Loop, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cache, tmp_path, "c")
    monkeypatch.setattr(Loop, "save", save)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="assurexray.training.loop"):
        model, meta, out = run(tiny_cache, tmp_path, "c")
    assert "resuming at epoch 2" in caplog.text
    assert caplog.text.count("epoch 1/2:") == 0 and caplog.text.count("epoch 2/2:") == 1
    assert same_weights(model, reference[0])  # bit-identical to the uninterrupted run
    metrics = json.loads((out / "live" / "metrics.json").read_text())
    assert metrics["step"] == 1  # the replayed first epoch plus the resumed second


def test_resume_state_from_another_or_a_finished_run_is_ignored(reference, caplog):
    path = reference[2] / "last" / "last.pt"
    fingerprint = torch.load(path, weights_only=True)["fingerprint"]
    with caplog.at_level(logging.INFO, logger="assurexray.training.loop"):
        assert training._read_resume(path, "another run") is None
        assert training._read_resume(path, fingerprint) is None
    assert "different params" in caplog.text and "had finished" in caplog.text


def test_undefined_val_auc_falls_back_to_val_loss(tiny_cache, tmp_path, caplog):
    # issue 9 item 10: a validation set with one class has no AUC; selection must not freeze
    val = SplitData([f"img{r:03d}" for r in (18, 21, 24, 27)], np.zeros(4, int))
    with caplog.at_level(logging.WARNING, logger="assurexray.training.loop"):
        _, meta = train_classifier(PARAMS, tiny_cache, CLASSES, split(TRAIN), val,
                                   tmp_path / "last", tmp_path / "live")
    assert "selecting the model on validation loss" in caplog.text
    history = torch.load(tmp_path / "last" / "last.pt", weights_only=True)["state"]["history"]
    losses = [r["val_loss"] for r in history]
    assert meta.epoch == int(np.argmin(losses)) and np.isnan(meta.best_val_macro_auc)
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["selection_metric"] == "val_loss" and summary["best_epoch"] == meta.epoch
