"""Inference speed machinery: forward streams, the traced forward, the micro-batcher."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from assurexray.inference.streams import forward_streams
from assurexray.inference.torch_engine import WithEmbedding, traced_with_embeddings
from assurexray.predict import ordered
from assurexray.serve.batching import MicroBatcher
from assurexray.training.models import build_model


def test_forward_streams_run_one_thread_each_and_restore_the_count():
    before = torch.get_num_threads()
    with forward_streams(torch.device("cpu")) as streams:
        assert streams == before and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with forward_streams(torch.device("cuda")) as streams:   # a GPU: one stream, threads kept
        assert streams == 1 and torch.get_num_threads() == before


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mobilenetv3_small_100", 3).eval()


def test_traced_forward_gives_the_eager_numbers_at_every_batch_size(model):
    x = torch.randn(5, 3, 64, 64)
    traced = traced_with_embeddings(model, x[:2])
    assert traced is not None
    with torch.inference_mode():
        for batch in (x[:1], x):    # traced on 2 images, run on 1 and 5
            eager_logits, eager_emb = WithEmbedding(model)(batch)
            logits, emb = traced(batch)
            assert torch.equal(logits, eager_logits) and torch.equal(emb, eager_emb)
            assert torch.equal(eager_logits, model(batch))   # the embedding's head is the model's


class Untraceable(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward_features(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("data-dependent control flow")
        return self.model.forward_features(x)

    def forward_head(self, x, pre_logits=False):
        return self.model.forward_head(x, pre_logits=pre_logits)

    def get_classifier(self):
        return self.model.get_classifier()


def test_an_untraceable_backbone_is_named_and_left_in_eager_mode(model, caplog):
    assert traced_with_embeddings(Untraceable(model), torch.randn(1, 3, 64, 64)) is None
    assert "Untraceable cannot be traced (data-dependent control flow)" in caplog.text


def test_ordered_keeps_the_order_and_a_bounded_number_in_flight():
    running, most = [0], [0]
    lock = threading.Lock()

    def slow_square(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01 * (i % 3))
        with lock:
            running[0] -= 1
        return i * i

    with ThreadPoolExecutor(4) as pool:
        assert list(ordered(pool, slow_square, range(12), ahead=2)) == [i * i for i in range(12)]
    assert most[0] <= 2


def rows(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in forward pass: each input's mean as its logits and embedding."""
    means = batch.reshape(len(batch), -1).mean(axis=1, keepdims=True)
    return means, means


def requests(batcher: MicroBatcher, values: list[float], stagger_s: float) -> list:
    """One thread per value: announce, wait until all are announced, submit (staggered)."""
    answers: list = [None] * len(values)
    announced = threading.Barrier(len(values))

    def request(i):
        with batcher.incoming() as submit:
            announced.wait()
            time.sleep(stagger_s * i)
            answers[i] = submit(np.full((2,), values[i])).result(timeout=10)[0][0]

    threads = [threading.Thread(target=request, args=(i,)) for i in range(len(values))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_announced_requests_share_one_forward_pass_and_get_their_own_rows():
    sizes: list[int] = []
    batcher = MicroBatcher(rows, max_batch=8, wait_s=10, queue_size=8, on_batch=sizes.append)
    try:
        # the first is queued 0.1 s before the last: the batch waits for those announced
        assert requests(batcher, [1.0, 2.0, 3.0, 4.0], stagger_s=0.03) == [1.0, 2.0, 3.0, 4.0]
    finally:
        batcher.close()
    assert sizes == [4]


def test_a_lone_request_does_not_wait_for_companions():
    sizes: list[int] = []
    batcher = MicroBatcher(rows, max_batch=8, wait_s=60, queue_size=8, on_batch=sizes.append)
    try:
        assert requests(batcher, [5.0], stagger_s=0) == [5.0]   # would time out after 10 s
    finally:
        batcher.close()
    assert sizes == [1]


def test_two_streams_split_the_requests_under_way():
    sizes: list[int] = []
    release = threading.Event()

    def held(batch):   # both streams hold their batch until the test has seen them
        release.wait(10)
        return rows(batch)

    batcher = MicroBatcher(held, max_batch=8, wait_s=10, queue_size=8, on_batch=sizes.append,
                           streams=2)
    try:
        done = threading.Thread(target=requests, args=(batcher, [1.0, 2.0, 3.0, 4.0], 0.02))
        done.start()
        deadline = time.monotonic() + 10
        while sum(sizes) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        done.join()
    finally:
        batcher.close()
    assert sizes == [2, 2]


def test_a_failed_forward_fails_its_batch_only_and_close_stops_the_workers():
    calls = [0]

    def flaky(batch):
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("out of memory")
        return rows(batch)

    batcher = MicroBatcher(flaky, max_batch=8, wait_s=0, queue_size=8)
    with batcher.incoming() as submit:
        with pytest.raises(RuntimeError, match="out of memory"):
            submit(np.ones(2)).result(timeout=10)
    with batcher.incoming() as submit:
        assert submit(np.ones(2)).result(timeout=10)[0][0] == 1.0
    batcher.close()
    assert not any(t.is_alive() for t in batcher.threads)
