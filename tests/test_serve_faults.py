"""The load-and-fault run of bench/serve_faults.py, small (a few seconds): a real `assurexray
serve` at the shipped params.yaml settings, 8 clients sending valid radiographs while 4 others
send every kind of hostile request, all on 127.0.0.1."""
from __future__ import annotations

import importlib.util
import sys

from assurexray.params import load_params
from serve_helpers import REPO, running_server

SECONDS = 4.0
spec = importlib.util.spec_from_file_location("serve_faults", REPO / "bench" / "serve_faults.py")
assert spec is not None and spec.loader is not None
serve_faults = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = serve_faults   # its dataclasses look their module up
spec.loader.exec_module(serve_faults)


def test_valid_and_hostile_uploads_at_the_shipped_settings(served_model, tmp_path):
    limits = load_params(REPO / "params.yaml").serve
    images = [p.read_bytes() for p in served_model.images[:4]]
    log = tmp_path / "server.log"
    # a generous start-up: importing torch and the app takes minutes on a loaded 2-core machine
    with running_server(served_model, log, api_keys=serve_faults.KEY,
                        startup_timeout=300) as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        result = serve_faults.run(port, proc.pid, limits, images, SECONDS, timeout=60)
    assert serve_faults.failures(result) == [], result
    kinds = set(serve_faults.hostile_requests(1, images[0], "k"))
    assert set(result["codes"]) == {"valid", *kinds}
    assert set(result["codes"]["valid"]) == {"200"} and result["codes"]["valid"]["200"] >= 8
    # the application was handed no body byte of a request refused from its headers
    refused = result["body_bytes_read_before_refusal"]
    assert refused["401"]["sum"] == 0 and refused["400"]["sum"] == 0
    assert result["rss_mib"]["peak"] < result["rss_bound_mib"]
    assert "Traceback" not in log.read_text()
