"""Benchmark cases of evaluate (vidvrd.md section 7) against the official VidVRD-helper evaluator,
run unmodified in the same process.

The helper is not vendored: set PYFASTLAB_VIDVRD_HELPER to a checkout of
https://github.com/xdshang/VidVRD-helper (the directory that holds evaluation/). Without it the
baseline is our Python port of the helper's algorithm (pyfastlab/reference/vidvrd_eval.py, the
same metrics), and the run says so. The runner interleaves the
rounds (one call of each implementation per round) and reports the median of the per-round ratios;
the metrics must be identical (atol = rtol = 0).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import os
import sys

import numpy as np
import torch

from .registry import BenchCase, Implementation, register

HELPER_ENV = "PYFASTLAB_VIDVRD_HELPER"
KEYS = ("mAP", "R@50", "R@100", "P@1", "P@5", "P@10")


@functools.lru_cache(maxsize=1)
def official_evaluate():
    """The helper's evaluation.visual_relation_detection.evaluate, imported from $PYFASTLAB_VIDVRD_HELPER
    (under a private package name, so no other `evaluation` package is shadowed), as a function
    (gt, pred) -> {KEYS: float}; a RuntimeError that says what to set when it is absent."""
    root = os.environ.get(HELPER_ENV)
    init = os.path.join(root or "", "evaluation", "__init__.py")
    if not root or not os.path.isfile(init):
        raise RuntimeError(f"skipped: the official helper is absent; set {HELPER_ENV}=/path/to/VidVRD-helper "
                           f"(a checkout of github.com/xdshang/VidVRD-helper), got {root!r}")
    name = "_pyfastlab_vidvrd_helper_evaluation"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[os.path.dirname(init)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    helper = importlib.import_module(f"{name}.visual_relation_detection").evaluate

    def run(gt, pred):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress and results
            mean_ap, rec_at_n, prec_at_n = helper(gt, pred)
        return {"mAP": float(mean_ap), "R@50": float(rec_at_n[50]), "R@100": float(rec_at_n[100]),
                "P@1": float(prec_at_n[1]), "P@5": float(prec_at_n[5]), "P@10": float(prec_at_n[10])}
    return run


@functools.lru_cache(maxsize=4)
def _evaluate_data(scale: float, many: bool) -> dict:
    """Seeded synthetic GT and predictions (the prediction "results" mapping, integer boxes).
    many=False: 200 VidVRD-style videos (T 120-600), each GT relation as a degraded copy (box
    jitter 4 px, shifts of up to 8 frames, 20 % flipped predicates, 10 % dropped) plus 20
    subject/object-swapped junk relations per video. many=True: 200 VidOR-style videos of 300
    frames with duplicate triplets, up to 200 predictions each, drawn from 40 degraded copies of
    every GT relation in random score order: most predictions have same-triplet candidates."""
    from ..vidvrd import degrade_predictions, groundtruth_from_annotations, make_vidvrd_like

    n = max(2, int(200 * scale))
    degrade = dict(box_sigma=4.0, shift=8, flip_p=0.2, drop_p=0.1)
    if not many:
        gt = groundtruth_from_annotations(make_vidvrd_like(n, seed=0))
        return dict(gt=gt, pred=degrade_predictions(gt, seed=0, extra=20, **degrade)["results"])
    gt = groundtruth_from_annotations(make_vidvrd_like(n, seed=0, style="vidor", frame_range=(300, 300),
                                                       edge_cases=("duplicate_triplets",)))
    copies = [degrade_predictions(gt, seed=s, cap=10**6, **degrade)["results"] for s in range(40)]
    rng = np.random.default_rng(0)
    pred = {}
    for vid in gt:
        pool = [r for c in copies for r in c[vid]][:200]
        order = rng.permutation(len(pool))
        pred[vid] = [dict(pool[k], score=1 - rank / len(pool) + float(rng.uniform(0, 1e-3)))
                     for rank, k in enumerate(order)]
    return dict(gt=gt, pred=pred)


def _metrics(fn):
    return lambda inp: (torch.tensor([fn(inp["gt"], inp["pred"])[k] for k in KEYS], dtype=torch.float64),)


def _port(gt, pred) -> dict:
    from ..reference import vidvrd_eval

    metrics = vidvrd_eval.evaluate(gt, pred)
    return {k: float(metrics[k]) for k in KEYS}


def _evaluate_impls() -> list[Implementation]:
    from ..vidvrd import evaluate

    try:
        baseline = official_evaluate()  # the official helper, unmodified
    except RuntimeError:  # absent: the case's label says the baseline is then the port
        baseline = _port
    return [Implementation("eager", _metrics(baseline), "baseline"),
            Implementation("cpu", _metrics(lambda g, p: evaluate(g, p, backend="cpu")))]

for _many, _label in ((False, "200 videos, vidvrd T 120-600, degraded GT copies + 20 junk"),
                      (True, "200 videos x 200 predictions, vidor T 300, degraded GT copies")):
    register(BenchCase(
        family="vidvrd", op="evaluate", device="cpu", dtype=torch.float64,
        label=f"{_label} (eager = the official VidVRD-helper with ${HELPER_ENV}, else its Python port)",
        make_inputs=lambda scale, m=_many: _evaluate_data(scale, m), implementations=_evaluate_impls,
        bytes_moved=lambda inp: 0, unit_bytes=lambda inp: 1, tolerance=dict(atol=0.0, rtol=0.0),
        target=">= 10x the official helper; metrics ==", measure_memory=False))
