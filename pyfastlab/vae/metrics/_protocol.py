"""What every metric shares: protocol presets, the result record, the ground-truth data
interface and batched encoding (vae.md 4.4).

Data interface (duck-typed, e.g. `pyfastlab.vae.data.DSprites`): `factor_sizes` (F ints),
`sample_factors(num, generator) → [num, F]` integer classes, `images(classes) → observations`.
`encode(observations)` returns codes `[N, d]` or a pair (mu, logvar); with a pair, code="mean"
scores mu (the default) and code="sample" a draw mu + sigma * eps as in the official repos.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from ...ops._checks import check_choice

PROTOCOL_NAMES = ("dlib", "reference", "demo")
CODES = ("mean", "sample")

# Sizes per metric and protocol. "dlib": disentanglement_lib's gin configs; "reference": the
# official MIPE / CFASL repos (where they publish no own sizes, dlib's are used); "demo": the small
# sizes of vae.md 8 (fast enough for tests and the 3-minute demo; not comparable with the others).
PROTOCOLS: dict[str, dict[str, dict[str, Any]]] = {
    "factor_vae": {
        "dlib": dict(batch_size=64, num_train=10000, num_eval=5000, num_variance=10000, prune=0.05),
        # reference: scored on the training votes (num_eval=0)
        "reference": dict(batch_size=100, num_train=800, num_eval=0, num_variance=100, prune=0.06),
        "demo": dict(batch_size=64, num_train=800, num_eval=400, num_variance=4000, prune=0.05),
    },
    "beta_vae": {
        "dlib": dict(batch_size=64, num_train=10000, num_eval=5000),
        "reference": dict(batch_size=64, num_train=500, num_eval=50),
        "demo": dict(batch_size=64, num_train=1000, num_eval=500),
    },
    "mig": {
        "dlib": dict(num_points=10000, num_bins=20),
        "reference": dict(num_points=10000, num_bins=20),
        "demo": dict(num_points=4000, num_bins=20),
    },
    "sap": {
        "dlib": dict(num_train=10000, num_test=5000),
        "reference": dict(num_train=10000, num_test=5000),
        "demo": dict(num_train=2000, num_test=1000),
    },
    "dci": {
        "dlib": dict(num_train=10000, num_test=5000),
        "reference": dict(num_train=10000, num_test=5000),
        "demo": dict(num_train=2000, num_test=1000),
    },
    "mfvm": {
        # CFASL's protocol; "dlib" carries FactorVAE's dlib sizes over (our extension, no dlib original)
        "dlib": dict(batch_size=64, num_votes=10000, num_variance=10000, prune=0.05),
        "reference": dict(batch_size=100, num_votes=800, num_variance=100, prune=0.06),
        "demo": dict(batch_size=100, num_votes=800, num_variance=2000, prune=0.06),
    },
}


@dataclass(frozen=True)
class MetricResult:
    """One score with everything needed to compare it: the protocol preset, the code type and
    the sizes actually used (params); details holds per-factor values and secondary scores."""
    metric: str
    score: float
    protocol: str
    code: str
    params: dict
    details: dict = field(default_factory=dict)

    def __float__(self) -> float:
        return self.score

    def __getitem__(self, key: str):
        return self.details[key]


def resolve(metric: str, protocol: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol's sizes with the caller's non-None overrides, validated."""
    check_choice("protocol", protocol, PROTOCOL_NAMES)
    params = dict(PROTOCOLS[metric][protocol])
    params.update({k: v for k, v in overrides.items() if v is not None})
    for name, value in params.items():
        if name == "prune":
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"prune must be a non-negative number, got {value!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return params


def require(metric: str, name: str, value: int, minimum: int, why: str) -> None:
    if value < minimum:
        raise ValueError(f"{metric}: {name} = {value} is too few for the protocol: at least {minimum} ({why})")


def check_data(data) -> tuple[int, ...]:
    missing = [a for a in ("factor_sizes", "sample_factors", "images") if not hasattr(data, a)]
    if missing:
        raise ValueError(f"data must provide factor_sizes, sample_factors(num, generator) and images(classes); "
                         f"{type(data).__name__} lacks {', '.join(missing)}")
    sizes = tuple(int(s) for s in data.factor_sizes)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"data.factor_sizes must be positive, got {sizes}")
    return sizes


def generator(seed: int) -> torch.Generator:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def encode_classes(data, encode: Callable, classes: Tensor, code: str, gen: torch.Generator,
                   encode_batch: int = 1024) -> Tensor:
    """Codes float64 `[N, d]` (on the encoder's device) of the observations of classes `[N, F]`,
    rendered and encoded in batches so that no more than encode_batch observations exist at once."""
    check_choice("code", code, CODES)
    out = []
    for chunk in classes.split(max(1, encode_batch)):
        result = encode(data.images(chunk))
        if isinstance(result, (tuple, list)):
            if len(result) != 2:
                raise ValueError(f"encode must return codes [N, d] or (mu, logvar), got a {len(result)}-tuple")
            mu, logvar = result
            if code == "sample":
                eps = torch.randn(mu.shape, generator=gen, dtype=torch.float64).to(mu.device)
                result = mu.double() + torch.exp(0.5 * logvar.double()) * eps
            else:
                result = mu
        elif code == "sample":
            raise ValueError("code='sample' needs encode to return (mu, logvar), it returned one tensor")
        if not isinstance(result, Tensor) or result.dim() != 2 or result.shape[0] != chunk.shape[0]:
            shape = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise ValueError(f"encode must return codes [N, d] for N = {chunk.shape[0]} observations, got {shape}")
        out.append(result.double())
    if not out:
        raise ValueError("no observations to encode")
    return torch.cat(out)


def sample_codes(data, encode: Callable, num: int, *, code: str = "mean", seed: int = 0,
                 encode_batch: int = 1024) -> tuple[Tensor, Tensor]:
    """(codes float64 `[num, d]`, classes `[num, F]`) of `num` uniformly sampled factor vectors:
    the input of mutual_information_gap, sap_score and dci."""
    check_data(data)
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    gen = generator(seed)
    classes = data.sample_factors(num, gen)
    return encode_classes(data, encode, classes, code, gen, encode_batch), classes


def check_codes_classes(metric: str, codes, classes) -> tuple[Tensor, Tensor]:
    codes, classes = torch.as_tensor(codes), torch.as_tensor(classes)
    if codes.dim() != 2 or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"{metric}: codes must be a real [N, d] array, got shape {tuple(codes.shape)}")
    if classes.dim() != 2 or classes.dtype.is_floating_point or classes.dtype == torch.bool:
        raise ValueError(f"{metric}: classes must be an integer [N, F] array, got shape {tuple(classes.shape)} "
                         f"and dtype {classes.dtype}")
    if codes.shape[0] != classes.shape[0]:
        raise ValueError(f"{metric}: codes has {codes.shape[0]} rows but classes has {classes.shape[0]}")
    if codes.shape[1] < 1 or classes.shape[1] < 1:
        raise ValueError(f"{metric}: codes and classes need at least one column each")
    codes = codes.double()
    if not bool(torch.isfinite(codes).all()):
        raise ValueError(f"{metric}: codes contain NaN or inf")
    return codes, classes.long().to(codes.device)


def dense_labels(classes: Tensor) -> tuple[Tensor, list[int]]:
    """Each factor's classes renumbered 0..K_f-1 (sorted), and the K_f."""
    cols, sizes = [], []
    for f in range(classes.shape[1]):
        values, inverse = torch.unique(classes[:, f], sorted=True, return_inverse=True)
        cols.append(inverse)
        sizes.append(int(values.numel()))
    return torch.stack(cols, dim=1), sizes


class FactorsAsObservations:
    """A view of a data source whose observations are its factor classes as float64 `[N, F]`:
    with encode = identity the codes are the factors themselves (the metrics' top known answer)."""

    def __init__(self, data):
        self.factor_sizes = check_data(data)
        self._data = data

    def sample_factors(self, num: int, generator: Optional[torch.Generator] = None) -> Tensor:
        return self._data.sample_factors(num, generator)

    def images(self, classes: Tensor) -> Tensor:
        return torch.as_tensor(classes).double()
