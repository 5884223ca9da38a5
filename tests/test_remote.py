"""A shared DVC remote for real: push a tiny run to an S3 API (moto's server on 127.0.0.1) and
to a plain directory, then a fresh clone pulls every output and has nothing to rerun."""

import boto3
import pytest
from moto.server import ThreadedMotoServer

from test_end_to_end import run
from tiny_project import make_project

BUCKET = "assurexray-store"
# moto accepts any credentials; these keep boto (and dvc-s3) away from real ones.
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
OUTPUTS = ("data/cache/images.npy", "data/splits/train.csv", "data/index.csv", "models/model.pt")


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 API on a free local port, holding one empty bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in FAKE_AWS.items():
            patch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, s3_endpoint):
    """A tiny project run up to `train` (1 epoch) and pushed to both remotes."""
    root = make_project(tmp_path_factory.mktemp("origin"), {"train": {"epochs": 1}})
    local_store = tmp_path_factory.mktemp("store")
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc"], root)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3_endpoint], root)
    run(["dvc", "remote", "add", "shared_dir", str(local_store)], root)
    run(["dvc", "repro", "train"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny run"], root)
    run(["dvc", "push"], root)
    run(["dvc", "push", "-r", "shared_dir"], root)
    return root


@pytest.mark.parametrize("remote", ["storage", "shared_dir"])
def test_fresh_clone_pulls_every_output_and_reruns_nothing(pushed, tmp_path, remote):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(pushed), str(clone)], tmp_path)
    assert not (clone / "models/model.pt").exists()
    run(["dvc", "pull", "-r", remote, "--with-deps", "train"], clone)  # all the tiny run made
    for out in OUTPUTS:
        assert (clone / out).read_bytes() == (pushed / out).read_bytes(), out
    assert "up to date" in run(["dvc", "status", "train"], clone).lower()
    repro = run(["dvc", "repro", "train"], clone)
    assert "Running stage" not in repro, repro


def test_the_s3_bucket_holds_the_cache(pushed, s3_endpoint):
    keys = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=BUCKET)
    objects = [o["Key"] for o in keys.get("Contents", [])]
    assert objects and all(k.startswith("dvc/files/md5/") for k in objects), objects[:5]
