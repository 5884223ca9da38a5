"""The loaded service: the inference core behind the micro-batcher, Grad-CAM, the optional
anomaly detector, telemetry.

``classify`` takes the bytes of one upload (held in memory only) and returns the result or
raises ``InputError`` with the HTTP status and a reason safe to show (no path, no trace).
"""
from __future__ import annotations

import base64
import contextlib
import io
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from assurexray.data.imageio import ImageReadError, sniff_format
from assurexray.explain.cam import compute_cams, overlay
from assurexray.inference.classifier import Classifier, Prepared
from assurexray.inference.drift import drift_report
from assurexray.inference.ood import RejectedInput
from assurexray.serve.batching import MicroBatcher, QueueFull, Submit
from assurexray.serve.deps import Settings
from assurexray.serve.telemetry import Telemetry

if TYPE_CHECKING:
    from assurexray.serve.anomaly import ServedDetector

log = logging.getLogger(__name__)
UPLOAD_NAME = "upload"   # uploads are never named in messages or logs


class InputError(Exception):
    """A request the service refuses: HTTP status, metrics reason, message for the client."""

    def __init__(self, status: int, reason: str, detail: str, retry_after: int | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.retry_after = status, reason, detail, retry_after


class Service:
    def __init__(self, settings: Settings):
        self.settings, self.limits = settings, settings.limits
        self.telemetry = Telemetry(self.limits.drift_window)
        self.ready = False
        self.error: str | None = None
        self.started = time.time()
        self.classifier: Classifier | None = None
        self.batcher: MicroBatcher | None = None
        self.detector: ServedDetector | None = None   # --anomaly-checkpoint
        self._cam_lock = threading.Lock()
        self._anomaly_lock = threading.Lock()
        # decoding holds up to about 5 x max_decoded_mb per image: this bounds how many at once
        self._decode_slots = threading.BoundedSemaphore(self.limits.decode_slots)
        self._streams = contextlib.ExitStack()

    def load(self) -> None:
        """Load the checkpoint, reference, operating point and anomaly detector; start the
        batcher."""
        s = self.settings
        try:
            classifier = Classifier.from_files(s.checkpoint, s.reference, s.engine)
            if s.test_rates is not None:   # another run's file is refused, as a reference is
                classifier.load_test_rates(s.test_rates)
            detector = _load_detector(s.anomaly_checkpoint, classifier.device)
        except Exception as exc:  # /health and the data routes report it; so does the log
            self.error = _without_paths(str(exc), s.checkpoint, s.reference, s.test_rates,
                                        s.anomaly_checkpoint)
            log.error("the model could not be loaded: %s", exc)
            return
        streams = self._streams.enter_context(classifier.engine.streams())
        self.batcher = MicroBatcher(classifier.forward, self.limits.micro_batch,
                                    self.limits.micro_batch_wait_ms / 1000, self.limits.queue_size,
                                    self.telemetry.batch_size.observe, streams)
        self.detector = detector
        self.classifier, self.ready = classifier, True   # last: loaded means batching too
        log.info("model loaded: %s (%s), %s engine, %d forward stream(s)",
                 classifier.meta.backbone, classifier.identity["checkpoint_sha256"][:12],
                 classifier.engine.name, streams)
        if detector is not None:
            log.info("anomaly detector loaded: %s", detector.identity)

    @property
    def loaded(self) -> Classifier:
        """The classifier once loaded; a request before that is told to come back, one after
        a failed load why it cannot be served."""
        if self.error is not None:
            raise InputError(503, "failed", f"the model failed to load: {self.error}")
        if self.classifier is None:
            raise InputError(503, "loading", "the model is not loaded yet", retry_after=5)
        return self.classifier

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self._streams.close()

    def decode(self, data: bytes, deadline: float) -> tuple[str, Prepared]:
        max_bytes = self.limits.max_upload_mb * 1024 * 1024
        if len(data) > max_bytes:
            raise InputError(413, "too_large", f"file of {len(data) / 2**20:.1f} MB exceeds the "
                                               f"{self.limits.max_upload_mb:g} MB limit")
        fmt = sniff_format(data)
        if fmt is None:
            raise InputError(415, "unsupported_type",
                             "unsupported file type: JPEG, PNG or DICOM expected (recognised by content)")
        if not self._decode_slots.acquire(timeout=_left(deadline)):
            raise InputError(504, "timeout", "no decoding slot free before the request timeout")
        try:
            return fmt, self.loaded.decode_bytes(data, UPLOAD_NAME, self.limits.max_pixels,
                                                 int(self.limits.max_decoded_mb * 2**20))
        except ImageReadError as exc:
            reason = "decompression_bomb" if "decompression bomb" in exc.reason else "undecodable"
            raise InputError(422, reason, f"cannot read the {fmt.upper()} file: {exc.reason}") from exc
        except RejectedInput as exc:
            raise InputError(422, "degenerate", f"rejected before the model: {exc}") from exc
        finally:
            self._decode_slots.release()

    @contextlib.contextmanager
    def arrival(self, announce: bool = True) -> Iterator[Submit | None]:
        """``MicroBatcher.incoming`` once the model is loaded, when ``announce``; else None."""
        if self.batcher is None or not announce:
            yield None
            return
        with self.batcher.incoming() as submit:
            yield submit

    def classify(self, data: bytes, gradcam: bool = False, submit: Submit | None = None,
                 deadline: float | None = None, anomaly_map: bool = False) -> dict:
        """The result for one upload; ``submit``: from ``arrival`` when the request was
        announced on arrival (else it is announced here); ``deadline``: ``time.monotonic()``
        by which the request must be answered (the guard's; default request_timeout_s from now).
        With a detector loaded the result carries ``anomaly`` (and, with ``anomaly_map``, its
        overlay); without one ``anomaly_map`` asks for nothing."""
        classifier = self.loaded
        if deadline is None:
            deadline = time.monotonic() + self.limits.request_timeout_s
        with contextlib.ExitStack() as stack:
            submit = submit or stack.enter_context(self.arrival())
            assert submit is not None  # the batcher starts before the classifier is published
            prepared, fmt, logits, embedding = self._infer(data, submit, deadline)
        result = classifier.results([prepared], logits[None], embedding[None])[0]
        self.telemetry.observe(result, prepared.stats, embedding)
        result = {"format": fmt, **result}
        if gradcam:
            result.update(self._cam(prepared, classifier.classes.index(result["pred"]), deadline))
        if self.detector is not None:
            result.update(self._anomaly(self.detector, prepared, anomaly_map, deadline))
        return result

    def _infer(self, data: bytes, submit: Submit,
               deadline: float) -> tuple[Prepared, str, np.ndarray, np.ndarray]:
        """Decode, then the forward pass in the micro-batcher; InputError when refused."""
        try:
            fmt, prepared = self.decode(data, deadline)
        except InputError as exc:
            self.telemetry.rejected.labels(exc.reason).inc()
            raise
        try:
            future = submit(prepared.pixels)
        except QueueFull as exc:
            self.telemetry.rejected.labels("queue_full").inc()
            raise InputError(503, "queue_full", "server busy: request queue full",
                             retry_after=1) from exc
        try:
            logits, embedding = future.result(timeout=_left(deadline))
        except FutureTimeout as exc:
            future.cancel()
            raise InputError(504, "timeout", "inference timed out") from exc
        return prepared, fmt, logits, embedding

    def _cam(self, prepared: Prepared, target: int, deadline: float) -> dict:
        if not self._cam_lock.acquire(timeout=_left(deadline)):
            raise InputError(504, "timeout", "Grad-CAM not started before the request timeout")
        try:
            # The torch model loads on the first Grad-CAM request (whatever the engine).
            cam = compute_cams(self.loaded.cam_model(), torch.from_numpy(prepared.pixels[None]),
                               [target])[0]
        finally:
            self._cam_lock.release()
        return {"gradcam_class": self.loaded.classes[target],
                "image_png": _png(prepared.boxed), "gradcam_png": _png(overlay(prepared.boxed, cam))}

    def _anomaly(self, detector: ServedDetector, prepared: Prepared, with_map: bool,
                 deadline: float) -> dict:
        """The detector's entry on the image the classifier saw. One request at a time, like
        Grad-CAM: concurrent torch passes would each take every core, and their memory at once."""
        if not self._anomaly_lock.acquire(timeout=_left(deadline)):
            raise InputError(504, "timeout", "anomaly detector not started before the request "
                                             "timeout")
        try:
            entry, amap = detector.score(prepared.boxed)
        finally:
            self._anomaly_lock.release()
        if not with_map:
            return {"anomaly": entry}
        return {"anomaly": entry, "anomaly_map_png": _png(overlay(prepared.boxed, amap))}

    def drift(self) -> dict:
        if self.loaded.reference is None:
            return {"drift": None, "note": "no training reference loaded: drift is not tested"}
        stats, embeddings = self.telemetry.window()
        return drift_report(self.loaded.reference, stats, embeddings, self.limits.drift_alpha,
                            self.limits.drift_permutations)

    def health(self) -> dict:
        status = "ok" if self.ready else "loading" if self.error is None else "failed"
        body: dict[str, object] = {"status": status,
                                   "uptime_s": round(time.time() - self.started, 1)}
        if self.ready:
            c = self.loaded
            body["model"] = c.identity
            body["operating_points"] = c.meta.operating_points
            body["ood_reference"] = c.reference is not None
            body["anomaly_detector"] = self.detector.identity if self.detector else None
        elif self.error:
            body["error"] = self.error
        return body


def _load_detector(path: Path | None, device) -> ServedDetector | None:
    if path is None:
        return None
    # imported here: timm and torchmetrics load only when a detector is served
    from assurexray.serve.anomaly import ServedDetector
    return ServedDetector.load(path, device)


def _left(deadline: float) -> float:
    """Seconds until ``deadline`` (``time.monotonic()``), at least 0."""
    return max(0.0, deadline - time.monotonic())


def _without_paths(message: str, *paths: Path | None) -> str:
    """The reason of a failed load as the service may show it: configured paths by file name."""
    for path in paths:
        if path is not None:
            message = message.replace(str(path), path.name)
    return message


def _png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
