"""The training loop, separate from the model: AdamW, per-step warmup + cosine schedule,
early stopping on validation macro one-vs-rest AUC (validation loss if the AUC is undefined),
dvclive logging and exact resume.

After every epoch ``last.pt`` holds everything needed to continue (weights, optimizer,
scheduler, scaler, RNG states, best weights so far, metric history) as plain data for
``weights_only`` loading. It is reused only by an unfinished run with the same fingerprint
(params, split contents, classes, cache size, training code); anything else starts fresh.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from assurexray.console import progress
from assurexray.data import datasets, transforms
from assurexray.data.datasets import CachedDataset, seed_epoch
from assurexray.data.transforms import eval_transform, train_transform
from assurexray.evaluation import metrics
from assurexray.evaluation.metrics import classification_metrics
from assurexray.params import Params, TrainParams, to_dict
from assurexray.training import distributed, losses, models
from assurexray.training.checkpoint import CheckpointMeta, atomic_save
from assurexray.training.distributed import Dist
from assurexray.training.losses import build_loss
from assurexray.training.models import build_model, default_device, weights_source
from assurexray.training.resources import Stopwatch, write_resources
from assurexray.training.weights import normalization

log = logging.getLogger(__name__)

RESUME_FILE = "last.pt"
# Modules whose code shapes a training run: a change there invalidates a resume state.
_CODE = (models, transforms, datasets, losses, metrics, distributed, sys.modules[__name__])


@dataclass(frozen=True)
class SplitData:
    image_ids: list[str]
    labels: np.ndarray  # class indices into the model outputs


@dataclass
class TrainState:
    """Loop progress; plain data so it can live in last.pt."""
    epoch: int = 0  # the next epoch to run
    selection: str = "val_macro_auc"  # or "val_loss" once the AUC was undefined
    best_metric: float = -math.inf  # the selection metric, signed so that higher is better
    best_epoch: int = -1
    bad_epochs: int = 0
    finished: bool = False
    history: list[dict] = field(default_factory=list)


def train_classifier(params: Params, cache, classes: list[str], train: SplitData,
                     val: SplitData, resume_dir: str | Path, live_dir: str | Path
                     ) -> tuple[nn.Module, CheckpointMeta]:
    """Train on ``train``, select on ``val``; return the best model (CPU) and checkpoint meta."""
    tp, mp = params.train, params.model
    if len(train.image_ids) < 2 or tp.epochs < 1:
        raise ValueError("training needs at least 2 training images and train.epochs >= 1")
    seed_everything(params.seed, tp.deterministic)
    ddp = distributed.start(default_device().type)
    device = distributed.process_device(ddp, default_device())
    torch.set_num_threads(tp.threads or distributed.cores_per_process())
    mean, std = normalization(mp.backbone)  # the statistics the initial weights expect
    train_set = CachedDataset(cache, train.image_ids, train.labels,
                              train_transform(tp, tp.image_size, mean, std))
    val_set = CachedDataset(cache, val.image_ids, val.labels,
                            eval_transform(tp.image_size, mean, std))
    train_loader = ddp.train_loader(train_set, tp.batch_size, tp.num_workers, params.seed)
    val_loader = ddp.eval_loader(val_set, tp.batch_size, tp.num_workers, params.seed)
    model = build_model(mp.backbone, len(classes), mp.init, mp.weights_path, mp.dropout)
    counts = np.bincount(train.labels, minlength=len(classes))
    criterion = build_loss(tp.loss, counts.tolist(), tp.focal_gamma)
    cache_size = int(cache.images.shape[-1])
    fingerprint = run_fingerprint(params, classes, train, val, cache_size)
    log.info("training %s (init: %s) on %d images (%s), validating on %d; device %s, %d threads",
             mp.backbone, mp.init, len(train_set), dict(zip(classes, counts.tolist())),
             len(val_set), device, torch.get_num_threads())
    try:
        best_state, state = fit(model, criterion, train_loader, val_loader, tp, params.seed,
                                device, Path(resume_dir) / RESUME_FILE, live_dir, fingerprint, ddp)
    finally:
        distributed.stop()
    model.load_state_dict(best_state)
    meta = CheckpointMeta(
        backbone=mp.backbone, classes=list(classes), image_size=tp.image_size,
        cache_size=cache_size, mean=mean, std=std, dropout=mp.dropout,
        weights=weights_source(model).to_dict(), params=to_dict(params), split=params.split,
        epoch=state.best_epoch, best_val_macro_auc=state.history[state.best_epoch]["val_macro_auc"])
    return model.cpu().eval(), meta


def fit(model: nn.Module, criterion: nn.Module, train_loader, val_loader, config: TrainParams,
        seed: int, device: torch.device, resume_path: Path, live_dir: str | Path,
        fingerprint: str, ddp: Dist = Dist()) -> tuple[dict, TrainState]:
    """Run (or resume) the epochs; return the best weights and the final loop state.

    ``model`` stays the plain module (its state dict has no DDP prefixes); the loop trains
    it through ``ddp.wrap``. Only rank 0 logs, writes dvclive and saves the resume state.
    """
    amp, amp_dtype, channels_last = distributed.precision(device, config)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    criterion.to(device)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, config.weight_decay),
                                  lr=config.lr)
    steps = len(train_loader)
    scheduler = warmup_cosine(optimizer, config.warmup_epochs * steps, config.epochs * steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    loop = Loop(ddp.wrap(model, device), criterion, optimizer, scheduler, scaler, device, amp,
                amp_dtype, channels_last, ddp)
    state, best_state = loop.resume(resume_path, fingerprint)
    with ddp.live(live_dir) as live:
        for record in state.history:  # DVC cleared the outputs: replay the finished epochs
            _log_epoch(live, record)
        while state.epoch < config.epochs and not state.finished:
            started = time.perf_counter()
            seed_epoch(train_loader, seed, state.epoch)
            ddp.set_epoch(train_loader, seed, state.epoch)
            desc = f"epoch {state.epoch + 1}/{config.epochs}"
            record = {"train_loss": loop.train_epoch(train_loader, desc),
                      **loop.validate(val_loader), "lr": scheduler.get_last_lr()[0]}
            _log_epoch(live, record)
            state.history.append(record)
            score = selection_score(record, state)
            if state.best_epoch < 0 or score > state.best_metric:
                state.best_metric, state.best_epoch, state.bad_epochs = score, state.epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                state.bad_epochs += 1
            log.info("%s: %s (%.0fs)%s", desc, _fmt(record), time.perf_counter() - started,
                     " best" if state.best_epoch == state.epoch else "")
            state.epoch += 1
            state.finished = state.epoch >= config.epochs or 0 < config.patience <= state.bad_epochs
            if ddp.main:
                loop.save(resume_path, fingerprint, state, best_state)
        if state.bad_epochs and state.epoch < config.epochs:
            log.info("early stop: no %s gain for %d epochs", state.selection, state.bad_epochs)
        live.summary["best_epoch"] = state.best_epoch
        live.summary["best_val_macro_auc"] = state.history[state.best_epoch]["val_macro_auc"]
        live.summary["selection_metric"] = state.selection
    if ddp.main:
        write_resources(live_dir, loop.stopwatch.summary(len(train_loader.dataset), device))
    if best_state is None:  # params guarantee train.epochs >= 1, so an epoch always ran
        raise RuntimeError("training finished without a completed epoch")
    return best_state, state


def selection_score(record: dict, state: TrainState) -> float:
    """This epoch's model-selection score (higher is better): the validation macro AUC, or
    minus the validation loss once the AUC has been undefined (NaN never beats a best, so
    selection would freeze on the first epoch); the switch restarts the search for the best."""
    if state.selection == "val_macro_auc" and not math.isfinite(record["val_macro_auc"]):
        log.warning("validation macro AUC is undefined (a class without validation images?); "
                    "selecting the model on validation loss from epoch %d on", state.epoch + 1)
        state.selection, state.best_epoch, state.best_metric = "val_loss", -1, -math.inf
    return record["val_macro_auc"] if state.selection == "val_macro_auc" else -record["val_loss"]


@dataclass
class Loop:
    """One training run's moving parts, and their save/restore."""
    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool
    amp_dtype: torch.dtype = torch.float16
    channels_last: bool = False
    ddp: Dist = Dist()
    stopwatch: Stopwatch = field(default_factory=Stopwatch)

    def train_epoch(self, loader, desc: str) -> float:
        with self.stopwatch.phase("train"):
            return self._train_epoch(loader, desc)

    def _train_epoch(self, loader, desc: str) -> float:
        self.model.train()
        total, count = 0.0, 0
        for images, labels in progress(loader, desc=desc, unit="batch", leave=False):
            images, labels = self._to_device(images, labels)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                loss = self.criterion(self.model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += loss.item() * len(labels)
            count += len(labels)
        return self.ddp.mean(total, count)

    def validate(self, loader) -> dict:
        with self.stopwatch.phase("val"):
            return self._validate(loader)

    @torch.inference_mode()
    def _validate(self, loader) -> dict:
        self.model.eval()
        all_logits, all_labels = [], []
        for images, labels in loader:
            images, labels = self._to_device(images, labels)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                all_logits.append(self.model(images).float())
            all_labels.append(labels)
        logits, labels = self.ddp.gather(torch.cat(all_logits), torch.cat(all_labels))
        probs = logits.softmax(dim=1).cpu().numpy()
        # macro AUC over the classes present (NaN if none), as the evaluate stage reports it
        scores = classification_metrics(labels.cpu().numpy(), probs, range(probs.shape[1]))
        return {"val_loss": self.criterion(logits, labels).item(),
                "val_macro_auc": scores["macro_auc"], "val_accuracy": scores["accuracy"]}

    def _to_device(self, images, labels):
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        return (images.to(self.device, non_blocking=True, memory_format=fmt),
                labels.to(self.device, non_blocking=True))

    def save(self, path: Path, fingerprint: str, state: TrainState,
             best_state: dict | None) -> None:
        atomic_save({"fingerprint": fingerprint, "state": asdict(state),
                     "model": distributed.unwrap(self.model).state_dict(), "best_model": best_state,
                     "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": rng_state()}, path)

    def resume(self, path: Path, fingerprint: str) -> tuple[TrainState, dict | None]:
        """Restore from ``path`` when it continues this very run, else a fresh state."""
        saved = self.ddp.from_main(_read_resume(path, fingerprint) if self.ddp.main else None)
        if saved is None:
            return TrainState(), None
        distributed.unwrap(self.model).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved["scaler"]:  # empty when saved by a disabled (CPU) scaler
            self.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        state = TrainState(**saved["state"])
        log.info("%s: resuming at epoch %d (best epoch %d by %s)", path, state.epoch + 1,
                 state.best_epoch + 1, state.selection)
        return state, saved["best_model"]


def _read_resume(path: Path, fingerprint: str) -> dict | None:
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file must not block training
        log.warning("%s: unreadable (%s); starting fresh", path, exc)
        return None
    if saved.get("fingerprint") != fingerprint:
        log.info("%s: from different params, split or code; starting fresh", path)
        return None
    if saved["state"]["finished"]:
        log.info("%s: that run had finished; starting a new one", path)
        return None
    return saved


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
                  ) -> LambdaLR:
    """Per-step schedule: linear warmup to the base lr, then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return LambdaLR(optimizer, factor)


def run_fingerprint(params: Params, classes: list[str], train: SplitData, val: SplitData,
                    cache_size: int) -> str:
    """What makes two training runs the same run (for resume)."""
    payload = {"seed": params.seed, "split": params.split, "model": asdict(params.model),
               "train": asdict(params.train), "classes": list(classes), "cache_size": cache_size,
               "train_split": [list(train.image_ids), train.labels.tolist()],
               "val_split": [list(val.image_ids), val.labels.tolist()],
               "code": [hashlib.sha256(Path(str(m.__file__)).read_bytes()).hexdigest() for m in _CODE]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read at cuBLAS init
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def rng_state() -> dict:
    """Every global RNG state as tensors and lists (weights_only loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, gauss],
            "python": list(random.getstate())}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _log_epoch(live: Live, record: dict) -> None:
    for name, value in record.items():
        live.log_metric(name, value)
    live.next_step()


def _fmt(record: dict) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in record.items())
