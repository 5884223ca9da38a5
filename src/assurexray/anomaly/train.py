"""Training an autoencoder on normal radiographs only, with the classifier's loop machinery.

The train partition's normal images are the training set, the validation partition's normal
images decide early stopping (lowest clean reconstruction MSE). The optimizer, schedule,
dvclive logging and exact resume (``last.pt`` in the resume folder, reused only by an unfinished
run with the same fingerprint) are those of ``training.loop``; the batches are (input, clean
target) pairs, so its training step applies as is.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from dvclive import Live
from timm.optim import param_groups_weight_decay
from torch import nn

from assurexray.anomaly import data as ae_data
from assurexray.anomaly import models as ae_models
from assurexray.anomaly.checkpoint import AutoencoderMeta
from assurexray.anomaly.data import NormalImages, ae_transform, normal_index, normal_subset
from assurexray.anomaly.models import architecture_config, build_autoencoder, count_parameters
from assurexray.data.datasets import make_loader, seed_epoch
from assurexray.params import AnomalyTrainParams, Params, to_dict
from assurexray.training.loop import (
    RESUME_FILE,
    Loop,
    SplitData,
    TrainState,
    _log_epoch,
    seed_everything,
    warmup_cosine,
)
from assurexray.training.models import default_device

log = logging.getLogger(__name__)

_CODE = (ae_models, ae_data, sys.modules[__name__])


class AutoencoderLoop(Loop):
    """``Loop`` whose validation is the mean reconstruction loss of the clean targets."""

    @torch.inference_mode()
    def validate(self, loader) -> dict:
        self.model.eval()
        total, count = 0.0, 0
        for inputs, targets in loader:
            inputs, targets = self._to_device(inputs, targets)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                loss = self.criterion(self.model(inputs).float(), targets)
            total += loss.item() * len(targets)
            count += len(targets)
        return {"val_loss": total / count}


def train_autoencoder(params: Params, arch: str, cache, classes: list[str], train: SplitData,
                      val: SplitData, resume_dir: str | Path, live_dir: str | Path
                      ) -> tuple[nn.Module, AutoencoderMeta]:
    """Fit ``arch`` on the normal images of ``train``; return the best model (CPU) and its meta."""
    ap, tp = params.anomaly, params.anomaly.train
    arch_params = getattr(ap, arch)
    normal = normal_index(classes)
    train_ids, train_y = normal_subset(train.image_ids, train.labels, normal)
    val_ids, val_y = normal_subset(val.image_ids, val.labels, normal)
    if len(train_ids) < 2 or not val_ids or tp.epochs < 1:
        raise ValueError(f"anomaly training needs >= 2 normal train images, >= 1 normal val image "
                         f"and epochs >= 1 (have {len(train_ids)}, {len(val_ids)}, {tp.epochs})")
    seed_everything(params.seed, tp.deterministic)
    device = default_device()
    train_set = NormalImages(cache, train_ids, train_y, classes, ae_transform(ap.image_size, True),
                             arch_params.noise_std, tp.noise_cells)
    val_set = NormalImages(cache, val_ids, val_y, classes, ae_transform(ap.image_size, False))
    # A last batch of one image would break BatchNorm's batch statistics.
    train_loader = make_loader(train_set, tp.batch_size, True, tp.num_workers, params.seed,
                               drop_last=len(train_set) % tp.batch_size == 1)
    val_loader = make_loader(val_set, tp.batch_size, False, tp.num_workers, params.seed)
    config = architecture_config(arch, arch_params)
    model = build_autoencoder(arch, ap.image_size, config)
    cache_size = int(cache.images.shape[-1])
    log.info("training the %s autoencoder (%d parameters) on %d normal images, validating on "
             "%d; device %s", arch, count_parameters(model), len(train_set), len(val_set), device)
    fingerprint = run_fingerprint(params, arch, train_ids, val_ids, cache_size)
    best_state, state = fit(model, train_loader, val_loader, tp, params.seed, device,
                            Path(resume_dir) / RESUME_FILE, live_dir, fingerprint)
    model.load_state_dict(best_state)
    meta = AutoencoderMeta(arch=arch, config=config, image_size=ap.image_size, cache_size=cache_size,
                           classes=list(classes), normal_class=classes[normal],
                           score=asdict(ap.score), noise_std=arch_params.noise_std,
                           params=to_dict(params), split=params.split, epoch=state.best_epoch,
                           best_val_loss=state.best_metric, n_train_normals=len(train_ids))
    return model.cpu().eval(), meta


def fit(model: nn.Module, train_loader, val_loader, config: AnomalyTrainParams, seed: int,
        device: torch.device, resume_path: Path, live_dir: str | Path,
        fingerprint: str) -> tuple[dict, TrainState]:
    """Run (or resume) the epochs; keep the weights of the lowest validation loss."""
    amp = device.type == "cuda"
    model.to(device)
    criterion = nn.MSELoss()
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, config.weight_decay),
                                  lr=config.lr)
    steps = len(train_loader)
    scheduler = warmup_cosine(optimizer, config.warmup_epochs * steps, config.epochs * steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    loop = AutoencoderLoop(model, criterion, optimizer, scheduler, scaler, device, amp)
    state, best_state = loop.resume(resume_path, fingerprint)
    if state.best_epoch < 0:
        state.best_metric = math.inf  # lower is better here
    with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) as live:
        for record in state.history:  # DVC cleared the outputs: replay the finished epochs
            _log_epoch(live, record)
        while state.epoch < config.epochs and not state.finished:
            started = time.perf_counter()
            seed_epoch(train_loader, seed, state.epoch)
            desc = f"epoch {state.epoch + 1}/{config.epochs}"
            record = {"train_loss": loop.train_epoch(train_loader, desc),
                      **loop.validate(val_loader), "lr": scheduler.get_last_lr()[0]}
            _log_epoch(live, record)
            state.history.append(record)
            if record["val_loss"] < state.best_metric:
                state.best_metric, state.best_epoch, state.bad_epochs = (
                    record["val_loss"], state.epoch, 0)
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                state.bad_epochs += 1
            log.info("%s: train loss %.5f, val loss %.5f (%.0fs)%s", desc, record["train_loss"],
                     record["val_loss"], time.perf_counter() - started,
                     " best" if state.best_epoch == state.epoch else "")
            state.epoch += 1
            state.finished = state.epoch >= config.epochs or 0 < config.patience <= state.bad_epochs
            loop.save(resume_path, fingerprint, state, best_state)
        live.summary["best_epoch"] = state.best_epoch
        live.summary["best_val_loss"] = state.best_metric
    if best_state is None:  # params guarantee anomaly.train.epochs >= 1
        raise RuntimeError("autoencoder training finished without a completed epoch")
    return best_state, state


def run_fingerprint(params: Params, arch: str, train_ids: list[str], val_ids: list[str],
                    cache_size: int) -> str:
    """What makes two autoencoder runs the same run (for resume)."""
    payload = {"seed": params.seed, "split": params.split, "arch": arch,
               "anomaly": asdict(params.anomaly), "cache_size": cache_size,
               "train": train_ids, "val": val_ids,
               "code": [hashlib.sha256(Path(str(m.__file__)).read_bytes()).hexdigest() for m in _CODE]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

