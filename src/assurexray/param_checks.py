"""Range and cross-key checks of the validated params (``params.load_params`` runs them).

The types in ``params`` cannot say that a batch holds at least two images or that a drift test
has enough permutations to fire: every numeric key has a rule here (``range_rules``; its own, or
named by a cross-key rule; tests/test_params.py checks the coverage), and every value
``tune.space`` can draw must pass the rules of the key it sets. A broken rule raises
``ParamsError`` naming the key, what it must be and the value found.
"""
from __future__ import annotations

import math

from assurexray.checked_dataclasses import ParamsError, from_dict
from assurexray.params import RUNTIME_KEYS, AnomalyParams, Params, to_dict

# A drift verdict spends serve.drift_alpha in two parts: this share on the embedding (MMD) test,
# the rest split (Bonferroni) between the KS tests of the image statistics (inference/drift.py).
DRIFT_EMBEDDING_SHARE = 0.5
# A permutation p-value is (1 + exceedances) / (1 + permutations), so it reaches the embedding
# test's level only with enough permutations: this many permuted statistics at or above the
# observed one must still let it fire (fewer would make the test's power hinge on the draw).
DRIFT_MIN_EXCEEDANCES = 10


def drift_permutations_needed(alpha: float) -> int:
    """The fewest permutations at which the embedding test, at level alpha x
    DRIFT_EMBEDDING_SHARE, still fires with DRIFT_MIN_EXCEEDANCES exceedances."""
    level = alpha * DRIFT_EMBEDDING_SHARE
    return math.floor((1 + DRIFT_MIN_EXCEEDANCES) / level) if level > 0 else 0



def check_ranges(p: Params) -> None:
    """Range and cross-key checks the types cannot express; ParamsError names the key."""
    _check_rules(p)
    _check_tune_space(p)


def _check_rules(p: Params) -> None:
    for key, ok, expected in range_rules(p):
        if not ok:
            raise ParamsError(f"'{key}' must be {expected}, got {_value(p, key)!r}")


def range_rules(p: Params) -> list[tuple[str, bool, str]]:
    """(key, holds, what it must be) for every numeric key; a cross-key rule names the other
    keys in its text (tests/test_params.py checks that every numeric key is covered)."""
    t, a = p.train, p.analysis
    frac = p.split_options.fractions
    rules = [
        ("seed", p.seed >= 0, ">= 0"),
        ("data.synthetic.n_images", p.data.synthetic.n_images >= 20, ">= 20"),
        ("data.synthetic.min_side", 0 < p.data.synthetic.min_side <= p.data.synthetic.max_side,
         "> 0 and <= data.synthetic.max_side"),
        ("data.btxrd.size", p.data.btxrd.size > 0, "> 0 (bytes of the release archive)"),
        ("audit.near_duplicate_hamming", p.audit.near_duplicate_hamming >= 0, ">= 0"),
        ("audit.max_image_pixels", p.audit.max_image_pixels > 0, "> 0"),
        ("audit.workers", p.audit.workers >= 1, ">= 1"),
        ("split_options.fractions", len(frac) == 3 and min(frac) > 0 and abs(sum(frac) - 1) < 1e-6,
         "three positive numbers (train, val, test) summing to 1"),
        ("split_options.train_centers", len(p.split_options.train_centers) > 0, "not empty"),
        ("split_options.center_val_fraction", 0 < p.split_options.center_val_fraction < 1,
         "in (0, 1)"),
        ("preprocess.cache_size", p.preprocess.cache_size >= 8, ">= 8"),
        ("preprocess.workers", p.preprocess.workers >= 1, ">= 1"),
        ("model.dropout", 0 <= p.model.dropout < 1, "in [0, 1)"),
        ("model.weights_path", (p.model.init == "file") == (p.model.weights_path is not None),
         "set (a local state dict) exactly when model.init is file"),
        ("train.threads", t.threads >= 0, ">= 0 (0 = every core)"),
        ("train.image_size", 8 <= t.image_size <= p.preprocess.cache_size,
         ">= 8 and <= preprocess.cache_size (training reads the cache; raise both together)"),
        ("train.batch_size", t.batch_size >= 2, ">= 2 (BatchNorm needs two images per batch)"),
        ("train.devices", t.devices >= 1, ">= 1"),
        ("train.batch_size", t.batch_size % max(1, t.devices) == 0,
         "a multiple of train.devices (it is the global batch, split across devices)"),
        ("train.epochs", t.epochs >= 1, ">= 1"),
        ("train.lr", t.lr > 0, "> 0"),
        ("train.weight_decay", t.weight_decay >= 0, ">= 0"),
        ("train.warmup_epochs", 0 <= t.warmup_epochs <= t.epochs, ">= 0 and <= train.epochs"),
        ("train.patience", t.patience >= 0, ">= 0 (0 = never stop early)"),
        ("train.focal_gamma", t.focal_gamma >= 0, ">= 0"),
        ("train.num_workers", t.num_workers >= 0, ">= 0"),
        ("train.seed", t.seed is None or t.seed >= 0, "null or >= 0"),
        ("evaluate.batch_size", p.evaluate.batch_size >= 1, ">= 1"),
        ("explain.per_class", p.explain.per_class >= 0, ">= 0"),
        ("explain.cam_threshold", 0 < p.explain.cam_threshold < 1, "in (0, 1)"),
        ("explain.road_percentiles", all(0 < q < 100 for q in p.explain.road_percentiles),
         "percentiles strictly between 0 and 100"),
        ("explain.road_images", p.explain.road_images >= 0, ">= 0 (0 = all)"),
        ("explain.road_bootstrap", p.explain.road_bootstrap >= 1, ">= 1"),
        ("explain.layer_images", p.explain.layer_images >= 0, ">= 0 (0 = all)"),
        ("explain.batch_size", p.explain.batch_size >= 1, ">= 1"),
        ("analysis.bootstrap_iterations", a.bootstrap_iterations >= 1, ">= 1"),
        ("analysis.ci_level", 0 < a.ci_level < 1, "in (0, 1), e.g. 0.95"),
        ("analysis.calibration_bins", a.calibration_bins >= 1, ">= 1"),
        ("analysis.sensitivity_target", 0 < a.sensitivity_target < 1, "in (0, 1)"),
        ("analysis.specificity_target", 0 < a.specificity_target < 1, "in (0, 1)"),
        ("analysis.age_bands", len(a.age_bands) >= 2
         and all(lo < hi for lo, hi in zip(a.age_bands, a.age_bands[1:])),
         "at least two strictly increasing ages"),
        ("analysis.min_subgroup_size", a.min_subgroup_size >= 1, ">= 1"),
        ("robustness.severities", p.robustness.severities >= 1, ">= 1"),
    ]
    return rules + _monitoring_rules(p) + _anomaly_rules(p.anomaly)


def _monitoring_rules(p: Params) -> list[tuple[str, bool, str]]:
    r, o, s = p.reference, p.ood, p.serve
    needed = drift_permutations_needed(s.drift_alpha)
    return [
        ("reference.embedding_dims", r.embedding_dims >= 1, ">= 1"),
        ("reference.sample_size", r.sample_size >= 2, ">= 2"),
        ("reference.batch_size", r.batch_size >= 1, ">= 1"),
        ("ood.false_alarm_rate", 0 < o.false_alarm_rate < 1, "in (0, 1)"),
        ("ood.min_side", o.min_side >= 1, ">= 1 (a side of 0 pixels has no aspect ratio)"),
        ("ood.max_aspect", o.max_aspect >= 1, ">= 1 (longer side / shorter side)"),
        ("ood.min_std", o.min_std >= 0, ">= 0"),
        ("ood.images_per_set", o.images_per_set >= 2, ">= 2"),
        ("serve.max_batch", s.max_batch >= 1, ">= 1"),
        ("serve.max_upload_mb", s.max_upload_mb > 0, "> 0"),
        ("serve.max_pixels", s.max_pixels > 0, "> 0"),
        ("serve.max_decoded_mb", s.max_decoded_mb > 0, "> 0"),
        ("serve.upload_slots", s.upload_slots >= 1, ">= 1"),
        ("serve.decode_slots", s.decode_slots >= 1, ">= 1"),
        ("serve.drift_window", s.drift_window >= 2, ">= 2 (a drift test needs two inputs)"),
        ("serve.drift_alpha", 0 < s.drift_alpha < 1, "in (0, 1)"),
        ("serve.drift_permutations", s.drift_permutations >= needed,
         f">= {needed} at serve.drift_alpha {s.drift_alpha:g}: the embedding test runs at "
         f"alpha x {DRIFT_EMBEDDING_SHARE:g} and must fire with up to {DRIFT_MIN_EXCEEDANCES} "
         "permuted statistics above the observed one"),
        ("serve.micro_batch", s.micro_batch >= 1, ">= 1"),
        ("serve.micro_batch_wait_ms", s.micro_batch_wait_ms >= 0, ">= 0"),
        ("serve.queue_size", s.queue_size >= 1, ">= 1"),
        ("serve.request_timeout_s", s.request_timeout_s > 0, "> 0"),
    ]


def _anomaly_rules(an: AnomalyParams) -> list[tuple[str, bool, str]]:
    tr, sc = an.train, an.score
    rules = [
        ("anomaly.archs", len(an.archs) >= 1 and len(set(an.archs)) == len(an.archs),
         "at least one architecture, each once"),
        ("anomaly.image_size", an.image_size >= 8, ">= 8"),
        ("anomaly.train.batch_size", tr.batch_size >= 2, ">= 2 (BatchNorm needs two images per batch)"),
        ("anomaly.train.epochs", tr.epochs >= 1, ">= 1"),
        ("anomaly.train.lr", tr.lr > 0, "> 0"),
        ("anomaly.train.weight_decay", tr.weight_decay >= 0, ">= 0"),
        ("anomaly.train.warmup_epochs", 0 <= tr.warmup_epochs <= tr.epochs,
         ">= 0 and <= anomaly.train.epochs"),
        ("anomaly.train.patience", tr.patience >= 0, ">= 0 (0 = never stop early)"),
        ("anomaly.train.noise_cells", tr.noise_cells >= 1, ">= 1"),
        ("anomaly.train.num_workers", tr.num_workers >= 0, ">= 0"),
        ("anomaly.unet.skip_dropout", 0 <= an.unet.skip_dropout < 1, "in [0, 1)"),
        ("anomaly.unet.drop_skips", all(0 <= lvl < an.unet.depth for lvl in an.unet.drop_skips),
         "levels in 0..anomaly.unet.depth - 1"),
        ("anomaly.score.topk_percent", 0 < sc.topk_percent <= 100, "in (0, 100]"),
        ("anomaly.score.smoothing_sigma", sc.smoothing_sigma >= 0, ">= 0 (0 = no smoothing)"),
        ("anomaly.score.ssim_window", sc.ssim_window >= 3 and sc.ssim_window % 2 == 1
         and sc.ssim_window <= an.image_size, "odd, >= 3 and <= anomaly.image_size"),
        ("anomaly.batch_size", an.batch_size >= 1, ">= 1"),
        ("anomaly.gallery", an.gallery >= 0, ">= 0"),
        ("anomaly.identity_lesions", an.identity_lesions >= 0, ">= 0"),
    ]
    for arch, net in (("unet", an.unet), ("reversed", an.reversed)):
        rules += [
            (f"anomaly.{arch}.base_channels", net.base_channels >= 1, ">= 1"),
            (f"anomaly.{arch}.depth", net.depth >= 1 and an.image_size % 2 ** net.depth == 0,
             ">= 1, with anomaly.image_size a multiple of 2**depth"),
            (f"anomaly.{arch}.latent", net.latent >= 0, ">= 0 (0 = convolutional bottleneck)"),
            (f"anomaly.{arch}.noise_std", net.noise_std >= 0, ">= 0 (0 = off)"),
        ]
    return rules + _feature_detector_rules(an)


def _feature_detector_rules(an: AnomalyParams) -> list[tuple[str, bool, str]]:
    ft, pc, pd = an.features, an.patchcore, an.padim
    return [
        ("anomaly.detectors", len(set(an.detectors)) == len(an.detectors), "no repeats"),
        ("anomaly.features.image_sizes", bool(ft.image_sizes) and all(
            32 <= s <= 1024 for s in ft.image_sizes), "one or more sizes in [32, 1024]"),
        ("anomaly.features.layer_sets", bool(ft.layer_sets) and all(
            layers and all(0 <= lv <= 4 for lv in layers) for layers in ft.layer_sets),
         "one or more non-empty lists of feature levels in 0..4"),
        ("anomaly.features.aggregations", bool(ft.aggregations), "one or more of max, topk"),
        ("anomaly.features.topk_percent", 0 < ft.topk_percent <= 100, "in (0, 100]"),
        ("anomaly.features.batch_size", ft.batch_size >= 1, ">= 1"),
        ("anomaly.features.weights_path", ft.init != "file" or bool(ft.weights_path),
         "a file path when anomaly.features.init is file"),
        ("anomaly.patchcore.coreset_ratios", bool(pc.coreset_ratios) and all(
            0 < r <= 1 for r in pc.coreset_ratios), "one or more ratios in (0, 1]"),
        ("anomaly.patchcore.neighbours", bool(pc.neighbours) and all(
            k >= 1 for k in pc.neighbours), "one or more k >= 1"),
        ("anomaly.patchcore.coreset_pool", pc.coreset_pool >= 1, ">= 1"),
        ("anomaly.patchcore.projection_dim", pc.projection_dim >= 1, ">= 1"),
        ("anomaly.patchcore.max_bank_mb", pc.max_bank_mb > 0, "> 0"),
        ("anomaly.padim.dims", pd.dims >= 1, ">= 1"),
        ("anomaly.padim.covariance_eps", pd.covariance_eps > 0,
         "> 0 (a few hundred images need a regularised covariance)"),
    ]


def _check_tune_space(p: Params) -> None:
    """Every tuned key must change a result (not a runtime key) and every value the search can
    draw (both ends of a range, each choice) must pass the key's type and range checks."""
    for key, dim in p.tune.space.items():
        if any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS):
            raise ParamsError(f"'tune.space.{key}': a runtime key changes no result; tune another")
        values: list = list(dim.choices or []) if dim.type == "choice" else [dim.low, dim.high]
        for value in values:
            drawn = int(value) if dim.type == "int" else value
            try:
                _check_rules(from_dict(Params, _with_value(p, key, drawn)))
            except ParamsError as exc:
                raise ParamsError(f"'tune.space.{key}' can draw {drawn!r}: {exc}") from exc


def _with_value(p: Params, key: str, value) -> dict:
    """The params as a plain mapping with dotted ``key`` set to ``value``."""
    raw = to_dict(p)
    *parents, leaf = key.split(".")
    section = raw
    for part in parents:
        section = section[part]
    section[leaf] = value
    return raw


def _value(params: Params, key: str):
    for part in key.split("."):
        params = getattr(params, part)
    return params
