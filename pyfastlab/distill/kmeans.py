"""Exact streaming Lloyd k-means (distill.md 4.3): builds the teacher feature memory of FSD's global loss.

`data` is a tensor [N, F] or a zero-argument callable returning a fresh iterable of [b, F] batches,
so a training set that does not fit in memory is clustered pass by pass. Each Lloyd iteration is
one full pass with the centroids fixed: squared distances from one GEMM plus row norms, argmin
(ties go to the lowest index), per-centroid sums from a one-hot^T X GEMM (no atomics, so bit-identical
reruns) accumulated across batches in fp64, int64 counts. An empty cluster keeps its centroid.
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from ..ops._checks import check_choice, check_tensor

Data = Union[Tensor, Callable[[], Iterable[Tensor]]]
_INITS = ("k-means++", "sample")


class KMeansResult(NamedTuple):
    centroids: Tensor              # [k, F] float32
    counts: Tensor                 # [k] int64, rows assigned to each centroid in the final pass
    inertia: float                 # sum of squared distances to the returned centroids
    assignments: Optional[Tensor]  # [N] int64 when `data` is a tensor, else None


def _batches(data: Data, batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        return data.split(batch_size)
    return data()


def _check_finite(name: str, x: Tensor) -> None:
    """One NaN or inf row would make its centroid, and through the distances every centroid, NaN."""
    finite = torch.isfinite(x).all(1)
    if not bool(finite.all()):
        row = int(torch.nonzero(~finite)[0])
        raise ValueError(f"{name} has a non-finite value (NaN or inf) in row {row}: k-means needs finite data")


def _finite_stream(data: Callable[[], Iterable[Tensor]]) -> Callable[[], Iterable[Tensor]]:
    """`data` with each batch checked as it is read (a stream may differ from pass to pass)."""
    def batches():
        for i, batch in enumerate(data()):
            if isinstance(batch, Tensor) and batch.dim() == 2 and batch.is_floating_point():
                _check_finite(f"data batch {i}", batch)
            yield batch  # anything else: _checked names the problem
    return batches


def _checked(batch, width: Optional[int], i: int) -> Tensor:
    check_tensor(f"data batch {i}", batch, floating=True)
    if batch.dim() != 2 or batch.shape[1] == 0:
        raise ValueError(f"data batch {i} must be [b, F] with F > 0, got shape {tuple(batch.shape)}")
    if width is not None and batch.shape[1] != width:
        raise ValueError(f"data batch {i} has F = {batch.shape[1]} features, earlier batches had {width}")
    return batch.float()


def squared_distances(x: Tensor, centroids: Tensor, c_norms: Tensor) -> Tensor:
    """max(||x||^2 - 2 x.c + ||c||^2, 0), [b, k], from one GEMM (clamped: rounding can go below 0)."""
    d = torch.addmm(c_norms[None, :], x, centroids.t(), alpha=-2.0)
    return (d + (x * x).sum(1, keepdim=True)).clamp_min_(0.0)


def _reservoir(data: Data, batch_size: int, size: int, gen: torch.Generator) -> tuple[Tensor, int, int]:
    """A uniform sample of `size` rows without replacement in one pass (bottom-`size` of i.i.d.
    uniform keys, one per row in stream order, so the sample does not depend on batch boundaries),
    the number of rows N and the width F."""
    kept, keys, n_rows, width = None, None, 0, None
    for i, batch in enumerate(_batches(data, batch_size)):
        batch = _checked(batch, width, i)
        width = batch.shape[1]
        n_rows += batch.shape[0]
        batch_keys = torch.rand(batch.shape[0], generator=gen).to(batch.device)
        kept = batch if kept is None else torch.cat([kept, batch])
        keys = batch_keys if keys is None else torch.cat([keys, batch_keys])
        if kept.shape[0] > size:
            order = torch.topk(keys, size, largest=False, sorted=False).indices.sort().values
            kept, keys = kept[order], keys[order]
    if kept is None or n_rows == 0:
        raise ValueError("data is empty: k-means needs at least k rows")
    return kept, n_rows, width


def _kmeans_pp(sample: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: first centre uniform, each next one drawn with probability proportional
    to the squared distance to the nearest chosen centre (uniform among the rest if all are 0)."""
    m = sample.shape[0]
    chosen = [int(torch.randint(m, (1,), generator=gen))]
    nearest = squared_distances(sample, sample[chosen], (sample[chosen] ** 2).sum(1)).squeeze(1).double()
    for _ in range(1, k):
        weights = nearest.cpu().clone()
        weights[chosen] = 0.0
        if not bool(weights.sum() > 0):  # fewer distinct rows than k: any unchosen row
            weights = torch.ones(m, dtype=torch.float64)
            weights[chosen] = 0.0
        idx = int(torch.multinomial(weights, 1, generator=gen))
        chosen.append(idx)
        c = sample[idx:idx + 1]
        nearest = torch.minimum(nearest, squared_distances(sample, c, (c * c).sum(1)).squeeze(1).double())
    return sample[chosen].clone()


def _initial(data: Data, k: int, init, seed: int, batch_size: int, init_size: Optional[int]) -> tuple[Tensor, int]:
    if isinstance(init, Tensor):
        check_tensor("init", init, floating=True)
        if init.dim() != 2 or init.shape[0] != k:
            raise ValueError(f"init as a tensor must be [k={k}, F], got shape {tuple(init.shape)}")
        n_rows, width = 0, None
        for i, batch in enumerate(_batches(data, batch_size)):
            width = _checked(batch, width, i).shape[1]
            n_rows += batch.shape[0]
        if width is not None and init.shape[1] != width:
            raise ValueError(f"init has F = {init.shape[1]} features, the data has {width}")
        return init.detach().float().clone(), n_rows
    check_choice("init", init, _INITS)
    size = max(20 * k, 2048) if init_size is None else int(init_size)
    if size < k:
        raise ValueError(f"init_size must be >= k = {k}, got {size}")
    gen = torch.Generator().manual_seed(int(seed))
    sample, n_rows, _ = _reservoir(data, batch_size, size, gen)
    if n_rows < k:
        return sample, n_rows  # the caller raises with the count
    if init == "sample":
        return sample[torch.randperm(sample.shape[0], generator=gen)[:k].to(sample.device)].clone(), n_rows
    return _kmeans_pp(sample, k, gen), n_rows


def _pass(data: Data, centroids: Tensor, batch_size: int, keep_assignments: bool):
    """One pass with the centroids fixed: fp64 per-centroid sums, int64 counts, inertia, labels."""
    k = centroids.shape[0]
    c_norms = (centroids * centroids).sum(1)
    sums = torch.zeros(centroids.shape, dtype=torch.float64, device=centroids.device)
    counts = torch.zeros(k, dtype=torch.int64, device=centroids.device)
    inertia = torch.zeros((), dtype=torch.float64, device=centroids.device)
    labels = []
    for i, batch in enumerate(_batches(data, batch_size)):
        x = _checked(batch, centroids.shape[1], i).to(centroids.device)
        if x.shape[0] == 0:
            continue
        d = squared_distances(x, centroids, c_norms)
        best, label = d.min(1)  # min returns the first minimal index on ties
        one_hot = torch.nn.functional.one_hot(label, k).to(x.dtype)
        sums += (one_hot.t() @ x).double()
        counts += torch.bincount(label, minlength=k)
        inertia += best.double().sum()
        if keep_assignments:
            labels.append(label)
    return sums, counts, float(inertia), (torch.cat(labels) if keep_assignments else None)


def kmeans(data: Data, k: int, *, n_iter: int = 3, init="k-means++", seed: int = 0, batch_size: int = 8192,
           init_size: Optional[int] = None) -> KMeansResult:
    """Lloyd k-means with `n_iter` update passes (3 mirrors FSD's three clustering epochs) and one
    final assignment pass, so counts, inertia and assignments belong to the returned centroids.

    init: "k-means++" (D^2 sampling on a uniform reservoir sample of `init_size` rows, default
    max(20 k, 2048)), "sample" (k distinct rows of that sample) or a [k, F] tensor. Deterministic
    for a given seed. Raises ValueError for k < 1, k > N, n_iter < 0, batch_size < 1, and for NaN or
    inf in the data or init (a stream's batches are checked as they are read, on every pass).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int (number of centroids), got {k!r}")
    if not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be an int >= 0, got {n_iter!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not (isinstance(data, Tensor) or callable(data)):
        raise ValueError("data must be a [N, F] tensor or a zero-argument callable returning an iterable of "
                         f"[b, F] batches, got {type(data).__name__}")
    if isinstance(data, Tensor):
        check_tensor("data", data, floating=True, dim=2)
        _check_finite("data", data)
    else:
        data = _finite_stream(data)
    if isinstance(init, Tensor) and init.dim() == 2:
        _check_finite("init", init.detach())
    with torch.no_grad():
        centroids, n_rows = _initial(data, k, init, seed, batch_size, init_size)
        if n_rows < k:
            raise ValueError(f"k = {k} centroids need at least k rows, the data has N = {n_rows}")
        for _ in range(n_iter):
            sums, counts, _, _ = _pass(data, centroids, batch_size, keep_assignments=False)
            filled = counts > 0
            means = (sums / counts.clamp_min(1)[:, None]).float()
            centroids = torch.where(filled[:, None], means, centroids)
        _, counts, inertia, labels = _pass(data, centroids, batch_size, keep_assignments=isinstance(data, Tensor))
    return KMeansResult(centroids, counts, inertia, labels)
