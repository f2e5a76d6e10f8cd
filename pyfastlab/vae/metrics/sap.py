"""Separated Attribute Predictability (Kumar et al. 2018; vae.md 4.4), disentanglement_lib's form.

S[d, k] = test accuracy of a class-balanced linear SVM (squared hinge, L2, C = 0.01) that predicts
factor k from code dimension d alone (continuous=True: R^2 of a linear fit on the training rows);
SAP = mean over factors of (best - second best S[., k]). A 1-D linear classifier cannot isolate
the interior classes of an ordinal factor, so even a perfect code scores below 1: compare
orderings, not values. Factors with a single class in the training rows are skipped.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ._protocol import MetricResult, check_codes_classes, require, resolve
from ._sklearn import sklearn_module

CLASSIFIER = dict(C=0.01, class_weight="balanced")


def _r2_matrix(codes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """cov(d, k)^2 / (var_d var_k) for every pair at once (0 for a constant dimension)."""
    x = codes - codes.mean(0)
    y = classes.double() - classes.double().mean(0)
    cov = x.t() @ y / (x.shape[0] - 1)
    var_x, var_y = x.square().sum(0) / (x.shape[0] - 1), y.square().sum(0) / (x.shape[0] - 1)
    r2 = cov.square() / (var_x.unsqueeze(1) * var_y.unsqueeze(0)).clamp_min(1e-300)
    return torch.where((var_x > 1e-12).unsqueeze(1), r2, torch.zeros_like(r2))


def sap_score(codes, classes, *, protocol: str = "dlib", num_train: Optional[int] = None,
              num_test: Optional[int] = None, continuous: bool = False, code: str = "mean") -> MetricResult:
    """SAP of codes `[N, d]` against integer classes `[N, F]`: the first num_train rows train, the
    next num_test rows test. code only labels the result. details: the score matrix `[d, F]`."""
    codes, classes = check_codes_classes("sap_score", codes, classes)
    params = resolve("sap", protocol, dict(num_train=num_train, num_test=num_test))
    require("sap_score", "num_train", params["num_train"], 2, "a classifier needs training rows")
    require("sap_score", "num_test", params["num_test"], 0 if continuous else 1, "the score is a test accuracy")
    needed = params["num_train"] + params["num_test"]
    require("sap_score", "codes rows", codes.shape[0], needed,
            f"num_train + num_test = {needed}; pass smaller num_train / num_test to use fewer")
    if codes.shape[1] < 2:
        raise ValueError("sap_score needs at least 2 code dimensions (a gap between the top two)")
    train_x, train_y = codes[:params["num_train"]].cpu(), classes[:params["num_train"]].cpu()
    test_x, test_y = codes[params["num_train"]:needed].cpu(), classes[params["num_train"]:needed].cpu()
    params["continuous"] = continuous
    skipped = [k for k in range(classes.shape[1]) if torch.unique(train_y[:, k]).numel() < 2]
    if continuous:
        matrix = _r2_matrix(train_x, train_y)
    else:
        svm = sklearn_module("svm", "sap_score")
        matrix = torch.zeros(codes.shape[1], classes.shape[1], dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # liblinear convergence notes on 1-D problems
            for k in range(classes.shape[1]):
                if k in skipped:
                    continue
                for d in range(codes.shape[1]):
                    model = svm.LinearSVC(**CLASSIFIER).fit(train_x[:, d:d + 1].numpy(), train_y[:, k].numpy())
                    matrix[d, k] = float((model.predict(test_x[:, d:d + 1].numpy()) == test_y[:, k].numpy()).mean())
    kept = [k for k in range(classes.shape[1]) if k not in skipped]
    top = matrix[:, kept].topk(2, dim=0).values
    gaps = top[0] - top[1]
    score = float(gaps.mean()) if kept else 0.0
    return MetricResult("sap", score, protocol, code, params,
                        {"matrix": matrix, "per_factor": gaps, "skipped_factors": skipped})
