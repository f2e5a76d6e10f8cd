"""FactorVAE score (Kim & Mnih 2018; vae.md 4.4).

Protocol: global variances v_d of the codes over num_variance random points; dims with
sqrt(v_d) >= prune are active (none → score 0). A vote picks a factor k uniformly, draws
batch_size factor vectors that share factor k, and votes (k, argmin over active d of
local variance / v_d). The majority-vote classifier maps each dim to its most voted factor
(ties → lowest factor index); the score is the fraction of evaluation votes it gets right.
Unlike disentanglement_lib, the vote records the dimension's own index, not its position
among the active dimensions (which dlib mixes up when a low dimension is pruned).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ._protocol import MetricResult, check_data, generator, require, resolve
from ._votes import active_dims, fixed_groups, global_variance, normalised_local_variance


def _votes(data, encode, num, params, variance, active, code, gen, encode_batch) -> torch.Tensor:
    """Vote counts `[F, d]` of `num` votes."""
    num_factors = len(data.factor_sizes)
    factor = torch.randint(num_factors, (num,), generator=gen)
    fixed = torch.nn.functional.one_hot(factor, num_factors).bool()
    classes = fixed_groups(data, num, params["batch_size"], fixed, gen)
    ratio = normalised_local_variance(data, encode, classes, variance, active, code, gen, encode_batch)
    dim = ratio.argmin(dim=1).cpu()          # first minimum: ties go to the lowest dimension
    votes = torch.zeros(num_factors, variance.numel(), dtype=torch.long)
    votes.index_put_((factor, dim), torch.ones_like(factor), accumulate=True)
    return votes


def factor_vae_score(data, encode: Callable, *, protocol: str = "dlib", code: str = "mean", seed: int = 0,
                     batch_size: Optional[int] = None, num_train: Optional[int] = None,
                     num_eval: Optional[int] = None, num_variance: Optional[int] = None,
                     prune: Optional[float] = None, encode_batch: int = 1024) -> MetricResult:
    """FactorVAE score of `encode` on `data` (see the module docstring). Sizes come from
    PROTOCOLS["factor_vae"][protocol] unless overridden; num_eval = 0 scores the training votes
    (the reference protocol). details: train accuracy, eval accuracy, active dims, vote matrices."""
    check_data(data)
    params = resolve("factor_vae", protocol, dict(batch_size=batch_size, num_train=num_train, num_eval=num_eval,
                                                  num_variance=num_variance, prune=prune))
    require("factor_vae_score", "batch_size", params["batch_size"], 2, "a within-group variance needs 2 codes")
    require("factor_vae_score", "num_variance", params["num_variance"], 2, "a variance needs 2 codes")
    require("factor_vae_score", "num_train", params["num_train"], 1, "the classifier needs votes")
    gen = generator(seed)
    variance = global_variance(data, encode, params["num_variance"], code, gen, encode_batch)
    active = active_dims(variance, params["prune"])
    details = {"num_active_dims": int(active.sum())}
    if not bool(active.any()):
        details.update(train_accuracy=0.0, eval_accuracy=0.0)
        return MetricResult("factor_vae", 0.0, protocol, code, params, details)
    train = _votes(data, encode, params["num_train"], params, variance, active, code, gen, encode_batch)
    evaluation = train if params["num_eval"] == 0 else _votes(data, encode, params["num_eval"], params, variance,
                                                              active, code, gen, encode_batch)
    classifier = train.argmax(dim=0)          # most voted factor per dimension (first on ties)
    dims = torch.arange(train.shape[1])
    train_acc = float(train[classifier, dims].sum() / train.sum())
    eval_acc = float(evaluation[classifier, dims].sum() / evaluation.sum())
    details.update(train_accuracy=train_acc, eval_accuracy=eval_acc, train_votes=train, eval_votes=evaluation)
    return MetricResult("factor_vae", eval_acc, protocol, code, params, details)
