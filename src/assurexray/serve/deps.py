"""The service's one dependencies module: settings (from the environment), API keys, the model.

Settings come from the environment (``ASSUREXRAY_*``) and the command line overrides them;
``serve:`` limits come from params.yaml. API keys never come from params.yaml or git: the
comma-separated ``ASSUREXRAY_API_KEYS`` and/or a key file (one key per line). Keys are compared
in constant time; with no key configured every endpoint is open (loopback only, unless
``--insecure``).
"""
from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from assurexray.errors import AssureXRayError
from assurexray.params import ServeParams, load_params

KEYS_ENV = "ASSUREXRAY_API_KEYS"


class ServeConfigError(AssureXRayError, ValueError):
    """The service cannot start with this configuration."""


@dataclass(frozen=True)
class Settings:
    checkpoint: Path = Path("models/calibrated.pt")
    reference: Path | None = Path("models/reference.npz")
    limits: ServeParams = field(default_factory=ServeParams)
    api_keys: frozenset[str] = frozenset()

    @classmethod
    engine: str = "onnxruntime"   # inference.engine of params.yaml
    def from_env(cls, env=os.environ, **overrides) -> Settings:
        """``ASSUREXRAY_CHECKPOINT``, ``_REFERENCE`` (empty: none), ``_PARAMS``,
        ``_API_KEYS``, ``_API_KEY_FILE``; keyword arguments (the command line) win."""
        values: dict = {}
        for name in ("checkpoint", "reference"):
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


def get_state(request: Request):
    """The loaded service (model, batcher, telemetry); 503 while the model is loading."""
    state = request.app.state.service
    if not state.ready:
        raise HTTPException(503, "model loading, retry shortly", headers={"Retry-After": "2"})
    return state


def require_api_key(request: Request,
                    x_api_key: Annotated[str | None, Header()] = None) -> None:
    keys = request.app.state.settings.api_keys
    if not keys:
        return
    given = (x_api_key or "").encode()
    # compare against every key (no early exit) so timing does not tell which key is close
    if not any([hmac.compare_digest(given, k.encode()) for k in keys]):
        raise HTTPException(401, "missing or wrong X-API-Key header",
                            headers={"WWW-Authenticate": "X-API-Key"})


Authorized = Depends(require_api_key)
