"""calibration.py against torchmetrics / sklearn, and temperature scaling on synthetic logits."""
import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.metrics import log_loss
from torchmetrics.classification import MulticlassCalibrationError

from assurexray.evaluation.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    nll,
    reliability_bins,
    reliability_rows,
    temperature_scaling_report,
)

K = 3


def random_probs(seed: int, n: int = 500):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    logits = rng.normal(size=(n, K)) * 2 + np.eye(K)[y]
    return softmax(logits, axis=1), y


def overconfident_logits(seed: int, n: int = 600, scale: float = 4.0):
    """Logits of a well-calibrated model (labels drawn from its softmax), multiplied by scale."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, K)) * 1.5
    probs = softmax(logits, axis=1)
    y = np.array([rng.choice(K, p=p) for p in probs])
    return logits * scale, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_and_mce_match_torchmetrics(seed):
    probs, y = random_probs(seed)
    for norm, ours in (("l1", expected_calibration_error), ("max", maximum_calibration_error)):
        metric = MulticlassCalibrationError(num_classes=K, n_bins=15, norm=norm)
        expected = metric(torch.tensor(probs), torch.tensor(y)).item()
        assert ours(probs, y, 15) == pytest.approx(expected, abs=1e-6)


def test_reliability_bins_account_for_every_sample():
    probs, y = random_probs(3)
    bins = reliability_bins(probs, y, 10)
    assert bins["count"].sum() == len(y)
    filled = bins["count"] > 0
    assert np.all((bins["confidence"][filled] >= bins["lower"][filled])
                  & (bins["confidence"][filled] < bins["upper"][filled]))
    assert np.isnan(bins["accuracy"][~filled]).all()


def test_brier_and_nll_match_references():
    probs, y = random_probs(4)
    onehot = np.eye(K)[y]
    assert brier_score(probs, y) == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, 1)))
    assert brier_score(onehot, y) == 0.0
    logits = np.log(probs)
    assert nll(logits, y) == pytest.approx(log_loss(y, probs, labels=range(K)))
    t = torch.nn.functional.cross_entropy(torch.tensor(logits / 2.0), torch.tensor(y))
    assert nll(logits, y, temperature=2.0) == pytest.approx(t.item())


def test_temperature_scaling_fixes_overconfidence_and_keeps_argmax():
    logits, y = overconfident_logits(5)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(4.0, rel=0.25)  # undoes the planted over-confidence
    assert nll(logits, y, t) < nll(logits, y) - 0.1
    before, after = calibration_summary(logits, y, 15), calibration_summary(logits, y, 15, t)
    assert after["ece"] < before["ece"]
    assert after["accuracy"] == before["accuracy"]
    np.testing.assert_array_equal(softmax(logits / t, 1).argmax(1), logits.argmax(1))


def test_temperature_fit_on_validation_transfers_to_test():
    val_logits, val_y = overconfident_logits(6)
    test_logits, test_y = overconfident_logits(7)
    t = fit_temperature(val_logits, val_y)
    assert nll(test_logits, test_y, t) < nll(test_logits, test_y)


def test_report_fits_the_temperature_on_validation_not_test():
    """Validation overconfident (T near 4), test calibrated (T near 1): only a fit on
    validation gives the report's T, so swapping or pooling the two would fail here."""
    val_logits, val_y = overconfident_logits(9, scale=4.0)
    test_logits, test_y = overconfident_logits(10, scale=1.0)
    report = temperature_scaling_report(val_logits, val_y, test_logits, test_y, 15)
    assert report["temperature"] == pytest.approx(fit_temperature(val_logits, val_y))
    assert report["temperature"] > 2.5 and fit_temperature(test_logits, test_y) < 1.5
    assert report["val"]["after"]["nll"] < report["val"]["before"]["nll"]


def test_temperature_one_is_a_no_op_and_calibrated_logits_keep_t_near_one():
    logits, y = overconfident_logits(8, n=3000, scale=1.0)
    assert calibration_summary(logits, y, 15, 1.0) == calibration_summary(logits, y, 15)
    assert fit_temperature(logits, y) == pytest.approx(1.0, abs=0.1)


def test_reliability_rows_before_after():
    logits, y = overconfident_logits(9)
    rows = reliability_rows(logits, y, 15, 3.0)
    assert all(r["count"] > 0 for r in rows)
    assert [r["bin"] for r in rows if r["calibration"] == "after"] == sorted(
        {r["bin"] for r in rows if r["calibration"] == "after"})
    for name in ("before", "after"):
        assert sum(r["count"] for r in rows if r["calibration"] == name) == len(y)
    with pytest.raises(ValueError, match="no validation"):
        fit_temperature(np.empty((0, K)), np.empty(0, int))


def test_empty_bins_do_not_poison_ece():
    # Both samples in the 0.95 bin, one right: gap |0.5 - 0.95|; the 14 empty bins add nothing.
    probs = np.array([[0.95, 0.05, 0.0], [0.05, 0.95, 0.0]])
    assert expected_calibration_error(probs, np.array([0, 0]), 15) == pytest.approx(0.45)
    assert maximum_calibration_error(probs, np.array([0, 0]), 15) == pytest.approx(0.45)


def test_uninformative_logits_hit_the_bound_with_a_warning(caplog):
    rng = np.random.default_rng(10)
    y = rng.integers(0, K, 300)
    logits = rng.normal(size=(300, K))  # unrelated to y: the best T flattens everything
    assert fit_temperature(logits, y) == pytest.approx(20.0, rel=1e-2)
    assert "edge of its search range" in caplog.text
