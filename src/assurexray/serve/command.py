"""Serve a trained model over HTTP: FastAPI on uvicorn, loopback by default (research use only).

Reads the pipeline's outputs: the checkpoint (with its temperature), the training reference
of the reference stage (drift and out-of-distribution checks), the operating points calibrate
chose on validation with their test rates measured by analyze (``--test-rates``), optionally an
anomaly model (``--anomaly-checkpoint``: its score, and a feature detector's decision, beside
every result), and the ``serve:`` limits of params.yaml. API keys come from
ASSUREXRAY_API_KEYS (comma-separated) and/or --api-key-file, never from params.yaml. Listening
beyond loopback without a key is refused unless --insecure is given. Requests must name the
server in their Host header by a loopback name, the --host address or an --allowed-host name.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.inference.classifier import DEFAULT_TEST_RATES
from assurexray.serve.app import create_app
from assurexray.serve.deps import Settings, allowed_hosts, check_bind, check_files

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="default models/calibrated.pt")
    parser.add_argument("--reference", type=Path, help="default models/reference.npz")
    parser.add_argument("--test-rates", type=Path,
                        help=f"the analyze stage's metrics of the checkpoint's run (default "
                             f"{DEFAULT_TEST_RATES} with the default checkpoint, when present): "
                             "each decision quotes its test rates beside the validation ones")
    parser.add_argument("--anomaly-checkpoint", type=Path,
                        help="an anomaly model (models/anomaly/<arch or detector>.pt): every "
                             "result gets its score (a detector's decision too); "
                             "/predict?anomaly_map=true adds its map (default: none)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="params.yaml for the serve: limits")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key-file", type=Path, help="file with one API key per line")
    parser.add_argument("--allowed-host", action="append", metavar="NAME",
                        help="a host name requests may carry in their Host header besides the "
                             "loopback names and --host (repeatable), e.g. the server's DNS name")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback address without any API key")


def run(args: argparse.Namespace) -> int:
    test_rates = args.test_rates or (DEFAULT_TEST_RATES if args.checkpoint is None
                                     and DEFAULT_TEST_RATES.is_file() else None)
    settings = Settings.from_env(checkpoint=args.checkpoint, reference=args.reference,
                                 test_rates=test_rates,
                                 anomaly_checkpoint=args.anomaly_checkpoint,
                                 params=args.params,
                                 api_key_file=args.api_key_file,
                                 allowed_hosts=allowed_hosts(args.host, args.allowed_host))
    check_bind(args.host, settings, args.insecure)
    check_files(settings)
    if settings.test_rates is None:
        log.warning("no test rates (--test-rates): decisions quote validation rates only, "
                    "measured on the images their thresholds were chosen on")
    log.warning(NOT_FOR_CLINICAL_USE)
    if not settings.api_keys:
        log.warning("no API key configured: every endpoint is open to whoever reaches %s", args.host)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=10)
    return 0
