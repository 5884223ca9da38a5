"""The service's one dependencies module: settings (from the environment), API keys, the model.

Settings come from the environment (``ASSUREXRAY_*``) and the command line overrides them;
``serve:`` limits come from params.yaml. API keys never come from params.yaml or git: the
comma-separated ``ASSUREXRAY_API_KEYS`` and/or a key file (one key per line). Keys are compared
in constant time, by the guard (``serve.guard``) before any body byte is read; with no key
configured every endpoint is open (loopback only, unless ``--insecure``). The Host header must
name one of ``allowed_hosts``: the loopback names, plus the ``--host`` served on and
``--allowed-host`` names.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from assurexray.errors import AssureXRayError
from assurexray.params import ServeParams, load_params

KEYS_ENV = "ASSUREXRAY_API_KEYS"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
PATHS = ("checkpoint", "reference", "test_rates", "anomaly_checkpoint")   # Settings' input files


class ServeConfigError(AssureXRayError, ValueError):
    """The service cannot start with this configuration."""


@dataclass(frozen=True)
class Settings:
    checkpoint: Path = Path("models/calibrated.pt")
    reference: Path | None = Path("models/reference.npz")
    # The analyze stage's metrics of the checkpoint's run: test rates quoted beside decisions.
    test_rates: Path | None = None
    # An anomaly model (models/anomaly/<name>.pt): its score beside every result.
    anomaly_checkpoint: Path | None = None
    limits: ServeParams = field(default_factory=ServeParams)
    engine: str = "onnxruntime"   # inference.engine of params.yaml
    api_keys: frozenset[str] = frozenset()
    allowed_hosts: frozenset[str] = LOOPBACK_NAMES   # names the Host header may carry

    @classmethod
    def from_env(cls, env=os.environ, **overrides) -> Settings:
        """``ASSUREXRAY_CHECKPOINT``, ``_REFERENCE``, ``_TEST_RATES``, ``_ANOMALY_CHECKPOINT``
        (empty: none), ``_PARAMS``, ``_API_KEYS``, ``_API_KEY_FILE``; keyword arguments (the
        command line) win."""
        values: dict = {}
        for name in PATHS:
            raw = env.get(f"ASSUREXRAY_{name.upper()}")
            if raw is not None:
                values[name] = Path(raw) if raw else None
        params = overrides.pop("params", None) or env.get("ASSUREXRAY_PARAMS")
        if params:
            loaded = load_params(params)
            values["limits"], values["engine"] = loaded.serve, loaded.inference.engine
        key_file = overrides.pop("api_key_file", None) or env.get("ASSUREXRAY_API_KEY_FILE")
        values["api_keys"] = read_api_keys(env.get(KEYS_ENV, ""), key_file)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def check_files(settings: Settings) -> None:
    """Every configured input file exists: fail at start-up, not after it."""
    for name in PATHS:
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ServeConfigError(f"{path} (--{name.replace('_', '-')}): not found; run "
                                   "`dvc repro` or give the path of an existing file")


def read_api_keys(env_value: str, key_file: str | Path | None) -> frozenset[str]:
    keys = [k.strip() for k in env_value.split(",")]
    if key_file:
        try:
            keys += Path(key_file).read_text().splitlines()
        except OSError as exc:
            raise ServeConfigError(f"{key_file}: cannot read the API key file ({exc.strerror})") from exc
    return frozenset(k.strip() for k in keys if k.strip())


def check_bind(host: str, settings: Settings, insecure: bool) -> None:
    """Refuse to listen beyond loopback with no API key, unless explicitly insecure."""
    if settings.api_keys or insecure or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ServeConfigError(
            f"refusing to serve on {host} without an API key: set {KEYS_ENV} or --api-key-file "
            "(or pass --insecure to accept anyone on the network)")


def allowed_hosts(bound: str, extra: list[str] | None) -> frozenset[str]:
    """Loopback names, the address served on (unless a wildcard) and the ``--allowed-host``
    names, lower case."""
    names = set(LOOPBACK_NAMES) | {name.strip().lower() for name in extra or [] if name.strip()}
    if bound not in ("0.0.0.0", "::", ""):
        names.add(bound.lower())
    return frozenset(names)


def get_state(request: Request):
    """The loaded service (model, batcher, telemetry); 503 while the model is loading
    (with Retry-After) or after it failed to load (without: retrying cannot help)."""
    state = request.app.state.service
    if state.error is not None:
        raise HTTPException(503, f"the model failed to load: {state.error}")
    if not state.ready:
        raise HTTPException(503, "model loading, retry shortly", headers={"Retry-After": "2"})
    return state


def key_is_valid(given: str, keys: frozenset[str]) -> bool:
    # compare against every key (no early exit) so timing does not tell which key is close
    return any([hmac.compare_digest(given.encode(), k.encode()) for k in keys])


# The guard checks the key; this declares the header in the OpenAPI schema (the docs' Authorize).
Authorized = Security(APIKeyHeader(name="X-API-Key", auto_error=False,
                                   description="checked before the request body is read"))
