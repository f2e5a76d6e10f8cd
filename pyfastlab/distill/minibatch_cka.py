"""Minibatch CKA (Nguyen, Raghu, Kornblith 2021; distill.md 4.4) for L x M layer pairs, DDP-aware.

Averaging per-batch CKA values is biased upwards and breaks the unit diagonal; averaging the
*HSIC terms* over minibatches and normalising once at the end is not: the unbiased estimator of
each batch is unbiased for the population HSIC, so the average converges to it. Accumulators are
fp64 sums; the number of batches cancels in the ratio, which is why the all-reduce is a plain SUM.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..ops._checks import check_int, check_state_keys, check_tensor
from ..reference.cka import centred_gram, project


def _grams(name: str, layers: Sequence[Tensor], debiased: bool) -> tuple[Tensor, int]:
    """Projected centred Grams C(K_l) of one minibatch, stacked and flattened: [L, b*b] fp64."""
    if isinstance(layers, Tensor):
        if layers.dim() < 3:  # as in cka_matrix: one tensor is a stack of layers
            raise ValueError(f"{name} as one tensor must be [L, b, ...], got shape {tuple(layers.shape)}")
        layers = layers.unbind(0)
    layers = list(layers)
    if not layers:
        raise ValueError(f"{name} is empty: pass at least one layer")
    rows = None
    grams = []
    for i, t in enumerate(layers):
        check_tensor(f"{name}[{i}]", t, floating=True)
        if t.dim() < 2 or t[0].numel() == 0:
            raise ValueError(f"{name}[{i}] must be [b, ...] with features, got shape {tuple(t.shape)}")
        if rows is not None and t.shape[0] != rows:
            raise ValueError(f"{name}[{i}] has b = {t.shape[0]} rows, {name}[0] has {rows}")
        rows = t.shape[0]
        flat = t.detach().reshape(rows, -1)
        # Gram in the input precision (fp32 at least); the projection and everything after in fp64.
        gram = centred_gram(flat if flat.dtype == torch.float64 else flat.float()).double()
        grams.append(project(gram, debiased).reshape(-1))
    return torch.stack(grams), rows


class MinibatchCKA:
    """Accumulates HSIC(x_l, y_m), HSIC(x_l, x_l), HSIC(y_m, y_m) over minibatches; `compute()`
    returns the [L, M] CKA matrix. debiased=True: unbiased HSIC per batch (batches with b < 4 are
    skipped with one warning, counted in `num_skipped`); debiased=False: the plug-in estimator
    (b < 2 skipped). Under an initialised torch.distributed process group, `compute()` all-reduces
    copies of the accumulators (a collective: call it on every rank), so repeated calls never
    double-count. Layer counts must agree across ranks (a rank without batches contributes zeros).
    """

    def __init__(self, *, debiased: bool = True):
        self.debiased = bool(debiased)
        self.reset()

    def reset(self) -> None:
        self.hsic_xy: Optional[Tensor] = None  # [L, M]
        self.hsic_xx: Optional[Tensor] = None  # [L]
        self.hsic_yy: Optional[Tensor] = None  # [M]
        self.num_batches = 0
        self.num_skipped = 0
        self._warned = False

    @property
    def _min_rows(self) -> int:
        return 4 if self.debiased else 2

    @torch.no_grad()
    def update(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        """Adds one minibatch: L tensors xs[l] [b, ...] and M tensors ys[m] [b, ...] (flattened)."""
        gx, b = _grams("xs", xs, self.debiased)
        gy, b_y = _grams("ys", ys, self.debiased)
        if b_y != b:
            raise ValueError(f"ys has b = {b_y} rows, xs has b = {b} (both describe the same examples)")
        if self.hsic_xy is not None and (gx.shape[0], gy.shape[0]) != tuple(self.hsic_xy.shape):
            raise ValueError(f"this batch has {gx.shape[0]} x {gy.shape[0]} layers, earlier batches had "
                             f"{self.hsic_xy.shape[0]} x {self.hsic_xy.shape[1]}")
        if b < self._min_rows:
            self.num_skipped += 1
            if not self._warned:
                warnings.warn(f"MinibatchCKA skips batches with fewer than {self._min_rows} rows "
                              f"(got b = {b}); see num_skipped", stacklevel=2)
                self._warned = True
            return
        scale = 1.0 / (b * (b - 3)) if self.debiased else 1.0 / (b - 1) ** 2
        xy, xx, yy = (gx @ gy.t()) * scale, (gx * gx).sum(1) * scale, (gy * gy).sum(1) * scale
        if self.hsic_xy is None:
            self.hsic_xy, self.hsic_xx, self.hsic_yy = xy, xx, yy
        else:
            self.hsic_xy += xy
            self.hsic_xx += xx
            self.hsic_yy += yy
        self.num_batches += 1

    def _global(self) -> tuple[Tensor, Tensor, Tensor, int]:
        """The accumulators summed over ranks (copies; the local state is untouched)."""
        local = (tuple(self.hsic_xy.shape) if self.hsic_xy is not None else (-1, -1))
        if not (dist.is_available() and dist.is_initialized()):
            if self.hsic_xy is None:
                raise ValueError("MinibatchCKA.compute() before any (large enough) batch was added")
            return self.hsic_xy, self.hsic_xx, self.hsic_yy, self.num_batches
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")
        shapes = [torch.zeros(2, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
        dist.all_gather(shapes, torch.tensor(local, dtype=torch.int64, device=device))
        seen = {tuple(s.tolist()) for s in shapes} - {(-1, -1)}
        if len(seen) != 1:
            per_rank = ", ".join(f"rank {r}: {tuple(s.tolist())}" for r, s in enumerate(shapes))
            what = "no rank has added a batch" if not seen else "mismatched layer counts (L, M) across ranks"
            raise ValueError(f"MinibatchCKA.compute(): {what} ({per_rank}; (-1, -1) = no batches)")
        n_x, n_y = seen.pop()
        if self.hsic_xy is None:
            xy, xx, yy = (torch.zeros(n_x, n_y, dtype=torch.float64), torch.zeros(n_x, dtype=torch.float64),
                          torch.zeros(n_y, dtype=torch.float64))
        else:
            xy, xx, yy = self.hsic_xy, self.hsic_xx, self.hsic_yy
        flat = torch.cat([xy.reshape(-1), xx, yy, torch.tensor([float(self.num_batches)], dtype=torch.float64,
                                                                device=xy.device)]).to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.to(xy.device)
        xy_g = flat[:n_x * n_y].reshape(n_x, n_y)
        return xy_g, flat[n_x * n_y:n_x * n_y + n_x], flat[n_x * n_y + n_x:-1], int(flat[-1])

    def compute(self) -> Tensor:
        """CKA [L, M] (fp64) = H_xy / sqrt(H_xx H_yy^T); NaN where a layer had zero HSIC (constant)."""
        xy, xx, yy, _ = self._global()
        den = xx[:, None] * yy[None, :]
        return torch.where(den > 0, xy / den.clamp_min(torch.finfo(torch.float64).tiny).sqrt(),
                           torch.full_like(xy, float("nan")))

    def state_dict(self) -> dict:
        """The accumulators as copies: later updates do not change a saved state."""
        copy = lambda t: None if t is None else t.clone()  # noqa: E731
        return {"debiased": self.debiased, "hsic_xy": copy(self.hsic_xy), "hsic_xx": copy(self.hsic_xx),
                "hsic_yy": copy(self.hsic_yy), "num_batches": self.num_batches, "num_skipped": self.num_skipped}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()` (copied); a bad state raises ValueError and changes nothing."""
        check_state_keys(state, _STATE_KEYS, "MinibatchCKA")
        if not isinstance(state["debiased"], bool):
            raise ValueError(f"state['debiased'] must be a bool, got {state['debiased']!r}")
        if state["debiased"] != self.debiased:
            raise ValueError(f"state was accumulated with debiased={state['debiased']}, this MinibatchCKA has "
                             f"debiased={self.debiased}")
        counts = {key: check_int(f"state[{key!r}]", state[key], minimum=0) for key in ("num_batches", "num_skipped")}
        hsic = [state[key] for key in ("hsic_xy", "hsic_xx", "hsic_yy")]
        if all(t is None for t in hsic):
            if counts["num_batches"]:
                raise ValueError(f"state['num_batches'] = {counts['num_batches']} but the HSIC accumulators are "
                                 f"None (no batch added)")
        else:
            for key, t, dim in zip(("hsic_xy", "hsic_xx", "hsic_yy"), hsic, (2, 1, 1)):
                check_tensor(f"state[{key!r}]", t, floating=True, dim=dim)
            xy, xx, yy = hsic
            if not xy.device == xx.device == yy.device:
                raise ValueError(f"state['hsic_xy'], ['hsic_xx'], ['hsic_yy'] must be on one device, got "
                                 f"{xy.device}, {xx.device}, {yy.device}")
            if (xx.shape[0], yy.shape[0]) != tuple(xy.shape) or xy.numel() == 0:
                raise ValueError(f"state['hsic_xy'] must be [L, M] with L, M >= 1, L and M the lengths of "
                                 f"state['hsic_xx'] [L] and state['hsic_yy'] [M]; got shapes {tuple(xy.shape)}, "
                                 f"{tuple(xx.shape)}, {tuple(yy.shape)}")
            if counts["num_batches"] == 0:
                raise ValueError("state['num_batches'] must be >= 1 when the HSIC accumulators are set")
            hsic = [t.detach().to(torch.float64, copy=True) for t in hsic]  # fp64 sums, never the caller's
        self.hsic_xy, self.hsic_xx, self.hsic_yy = hsic
        self.num_batches, self.num_skipped = counts["num_batches"], counts["num_skipped"]


_STATE_KEYS = frozenset(("debiased", "hsic_xy", "hsic_xx", "hsic_yy", "num_batches", "num_skipped"))
