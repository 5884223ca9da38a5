"""Prometheus metrics and the drift window of recent inputs.

Each app owns its registry (not prometheus-client's global one), so several apps in one
process (tests) do not collide. The drift window keeps only image statistics and embeddings
of the last ``drift_window`` inputs: never pixels, names or DICOM fields.
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Telemetry:
    def __init__(self, drift_window: int):
        self.registry = CollectorRegistry()
        self.requests = Counter("assurexray_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("assurexray_request_seconds", "Request latency by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("assurexray_predictions", "Predictions by predicted class",
                                   ["predicted_class"], registry=self.registry)
        self.rejected = Counter("assurexray_rejected_inputs", "Inputs refused, by reason",
                                ["reason"], registry=self.registry)
        self.ood = Counter("assurexray_out_of_distribution",
                           "Inputs flagged out of distribution", registry=self.registry)
        self.batch_size = Histogram("assurexray_micro_batch_size", "Inputs per forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        # what a refused request cost: body bytes handed to the application before the refusal
        self.refused_body_bytes = Histogram(
            "assurexray_refused_body_bytes", "Body bytes read before a refusal, by status",
            ["status"], buckets=(0, 4096, 65536, 2**20, 2**24, 2**26), registry=self.registry)
        self._window: deque = deque(maxlen=drift_window)
        self._lock = threading.Lock()

    def observe(self, result: dict, stats: np.ndarray, embedding: np.ndarray) -> None:
        self.predictions.labels(result["pred"]).inc()
        if result["ood"].get("flagged"):
            self.ood.inc()
        with self._lock:
            self._window.append((stats, embedding))

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """(stats (n, F), embeddings (n, D)) of the recent inputs, oldest first."""
        with self._lock:
            items = list(self._window)
        if not items:
            return np.empty((0, 0)), np.empty((0, 0))
        stats, embeddings = zip(*items)
        return np.stack(stats), np.stack(embeddings)
