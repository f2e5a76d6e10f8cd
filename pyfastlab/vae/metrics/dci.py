"""DCI disentanglement, completeness, informativeness (Eastwood & Williams 2018; vae.md 4.4).

An importance matrix R `[d, F]` >= 0 comes from one classifier per factor trained on the first
num_train rows; informativeness I = mean test accuracy on the next num_test rows. With
R~ = R + 1e-11 and entropies in base F (rows) and d (columns):
  D = sum_d rho_d (1 - H_F(R~_d. / sum_k R~_dk)),  rho_d = sum_k R_dk / sum R
  C = sum_k rho'_k (1 - H_d(R~_.k / sum_d R~_dk)), rho'_k = sum_d R_dk / sum R
(uniform rho, rho' when R = 0). model="gbt": scikit-learn's GradientBoostingClassifier with its
defaults and R[:, k] = its feature importances (disentanglement_lib's choice; slow). model="tree":
the built-in torch CART of `tree.py`, importances normalised per factor (fast; not comparable).
The default model is "gbt" under protocol="dlib" (as disentanglement_lib's dci.py) and "tree" under
the other protocols.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ...ops._checks import check_choice
from ._protocol import MetricResult, check_codes_classes, dense_labels, require, resolve
from ._sklearn import sklearn_module
from .tree import fit_tree

MODELS = ("tree", "gbt")
_EPS = 1e-11


def _one_minus_entropy(p: Tensor, base: int, dim: int) -> Tensor:
    p = p / p.sum(dim=dim, keepdim=True)
    if base <= 1:
        return torch.ones(p.shape[1 - dim], dtype=p.dtype)
    return 1.0 - (-(p * p.log()).sum(dim=dim) / math.log(base))


def dci_from_importance(importance: Tensor) -> tuple[float, float, Tensor, Tensor]:
    """(D, C, per-code disentanglement `[d]`, per-factor completeness `[F]`) of R `[d, F]`."""
    r = importance.double().abs()
    num_codes, num_factors = r.shape
    per_code = _one_minus_entropy(r + _EPS, num_factors, dim=1)
    per_factor = _one_minus_entropy(r + _EPS, num_codes, dim=0)
    weights = r if float(r.sum()) > 0 else torch.ones_like(r)
    rho, rho_prime = weights.sum(1) / weights.sum(), weights.sum(0) / weights.sum()
    return float((per_code * rho).sum()), float((per_factor * rho_prime).sum()), per_code, per_factor


def _importance_tree(train_x, train_y, test_x, test_y, sizes, seed):
    importance = torch.zeros(train_x.shape[1], train_y.shape[1], dtype=torch.float64)
    accuracy = []
    for k, size in enumerate(sizes):
        tree = fit_tree(train_x, train_y[:, k], size)
        total = tree.importances.sum()
        importance[:, k] = tree.importances / total if float(total) > 0 else tree.importances
        accuracy.append(float((tree.predict(test_x) == test_y[:, k]).double().mean()))
    return importance, accuracy


def _importance_gbt(train_x, train_y, test_x, test_y, sizes, seed):
    try:
        ensemble = sklearn_module("ensemble", "dci(model='gbt')")
    except ImportError as err:
        raise ImportError(f"{err}; or pass model='tree' for the built-in torch tree") from err
    importance = torch.zeros(train_x.shape[1], train_y.shape[1], dtype=torch.float64)
    accuracy = []
    for k in range(train_y.shape[1]):
        y = train_y[:, k].numpy()
        if len(set(y.tolist())) < 2:         # GBT needs two classes: a constant factor predicts itself
            accuracy.append(float((test_y[:, k].numpy() == y[0]).mean()))
            continue
        model = ensemble.GradientBoostingClassifier(random_state=seed).fit(train_x.numpy(), y)
        importance[:, k] = torch.from_numpy(abs(model.feature_importances_))
        accuracy.append(float((model.predict(test_x.numpy()) == test_y[:, k].numpy()).mean()))
    return importance, accuracy


def dci(codes, classes, *, model: Optional[str] = None, protocol: str = "dlib", num_train: Optional[int] = None,
        num_test: Optional[int] = None, seed: int = 0, code: str = "mean") -> MetricResult:
    """DCI of codes `[N, d]` against integer classes `[N, F]`: score = D; details hold
    disentanglement, completeness, informativeness (and train accuracy), importance `[d, F]`.
    model=None: "gbt" for protocol="dlib" (needs scikit-learn), "tree" otherwise."""
    if model is None:
        model = "gbt" if protocol == "dlib" else "tree"
    check_choice("model", model, MODELS)
    codes, classes = check_codes_classes("dci", codes, classes)
    params = resolve("dci", protocol, dict(num_train=num_train, num_test=num_test))
    require("dci", "num_train", params["num_train"], 2, "a classifier needs training rows")
    require("dci", "num_test", params["num_test"], 1, "informativeness is a test accuracy")
    needed = params["num_train"] + params["num_test"]
    require("dci", "codes rows", codes.shape[0], needed,
            f"num_train + num_test = {needed}; pass smaller num_train / num_test to use fewer")
    params["model"] = model
    labels, sizes = dense_labels(classes[:needed].cpu())
    x = codes[:needed].cpu()
    split = params["num_train"]
    fit = _importance_tree if model == "tree" else _importance_gbt
    importance, accuracy = fit(x[:split], labels[:split], x[split:], labels[split:], sizes, seed)
    d_score, c_score, per_code, per_factor = dci_from_importance(importance)
    informativeness = sum(accuracy) / len(accuracy)
    return MetricResult("dci", d_score, protocol, code, params,
                        {"disentanglement": d_score, "completeness": c_score, "informativeness": informativeness,
                         "importance": importance, "per_code": per_code, "per_factor": per_factor,
                         "accuracy": accuracy})
