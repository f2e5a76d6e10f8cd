"""beta-VAE score (Higgins et al. 2017; vae.md 4.4).

A point: factor k uniform; two sets of batch_size factor vectors, pairwise equal in factor k;
feature = mean_b |e(x1_b) - e(x2_b)| `[d]`, label k. A multinomial logistic regression (L2,
C = 1, L-BFGS, at most 100 iterations: fixed and recorded, the classifier's settings move the
score) is fit on num_train points; the score is its accuracy on num_eval fresh points.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

from ._protocol import MetricResult, check_data, encode_classes, generator, require, resolve
from ._sklearn import sklearn_module

CLASSIFIER = dict(C=1.0, solver="lbfgs", max_iter=100)


def _points(data, encode, num, group, code, gen, encode_batch):
    num_factors = len(data.factor_sizes)
    factor = torch.randint(num_factors, (num,), generator=gen)
    first = data.sample_factors(num * group, gen).reshape(num, group, num_factors)
    second = data.sample_factors(num * group, gen).reshape(num, group, num_factors)
    same = torch.nn.functional.one_hot(factor, num_factors).bool().unsqueeze(1)
    second = torch.where(same, first, second)
    both = torch.cat([first, second], dim=1).reshape(num * 2 * group, num_factors)
    codes = encode_classes(data, encode, both, code, gen, encode_batch).reshape(num, 2, group, -1)
    features = (codes[:, 0] - codes[:, 1]).abs().mean(dim=1)
    return features.cpu().numpy(), factor.numpy()


def beta_vae_score(data, encode: Callable, *, protocol: str = "dlib", code: str = "mean", seed: int = 0,
                   batch_size: Optional[int] = None, num_train: Optional[int] = None,
                   num_eval: Optional[int] = None, encode_batch: int = 1024) -> MetricResult:
    """beta-VAE score (eval accuracy) with sizes from PROTOCOLS["beta_vae"][protocol] unless
    overridden. details: train_accuracy, eval_accuracy, converged (L-BFGS within max_iter)."""
    sizes = check_data(data)
    params = resolve("beta_vae", protocol, dict(batch_size=batch_size, num_train=num_train, num_eval=num_eval))
    require("beta_vae_score", "batch_size", params["batch_size"], 1, "a feature averages pairs")
    require("beta_vae_score", "num_train", params["num_train"], 2 * len(sizes),
            "the classifier needs training points, about two per factor at the very least")
    require("beta_vae_score", "num_eval", params["num_eval"], 1, "the score is an evaluation accuracy")
    linear_model = sklearn_module("linear_model", "beta_vae_score")
    exceptions = sklearn_module("exceptions", "beta_vae_score")
    gen = generator(seed)
    x_train, y_train = _points(data, encode, params["num_train"], params["batch_size"], code, gen, encode_batch)
    x_eval, y_eval = _points(data, encode, params["num_eval"], params["batch_size"], code, gen, encode_batch)
    details = {"classifier": f"LogisticRegression({CLASSIFIER})"}
    if len(set(y_train.tolist())) < 2:
        raise ValueError(f"beta_vae_score: the {params['num_train']} training points cover one factor only; "
                         "raise num_train")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", exceptions.ConvergenceWarning)
        model = linear_model.LogisticRegression(**CLASSIFIER).fit(x_train, y_train)
    details["converged"] = not any(issubclass(w.category, exceptions.ConvergenceWarning) for w in caught)
    details["train_accuracy"] = float((model.predict(x_train) == y_train).mean())
    details["eval_accuracy"] = float((model.predict(x_eval) == y_eval).mean())
    return MetricResult("beta_vae", details["eval_accuracy"], protocol, code, params, details)
