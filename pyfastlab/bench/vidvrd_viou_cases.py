"""Benchmark cases of trajectory_viou and evaluate in the vidvrd family (vidvrd.md section 7)."""
from __future__ import annotations

import functools

import numpy as np
import torch

from .. import ops
from ..ops import _backends
from ..reference import vidvrd_eval, vidvrd_viou as reference
from .registry import BenchCase, Implementation, register


def _viou_inputs(P, Q, T, device):
    """Seeded spans (begin ~ U[0, T - 30], length ~ U[30, T - begin]) and random-walk boxes."""
    def make(scale: float) -> dict:
        p, q = max(4, int(P * scale)), max(4, int(Q * scale))
        gen = torch.Generator().manual_seed(0)

        def tracks(n):
            walk = torch.cumsum(3 * torch.randn(n, T, 2, generator=gen), 1) + 300 * torch.rand(n, 1, 2, generator=gen)
            boxes = torch.cat([walk, walk + 60 + 180 * torch.rand(n, 1, 2, generator=gen)], 2).round()
            begin = torch.randint(0, T - 30, (n,), generator=gen)
            length = 30 + (torch.rand(n, generator=gen) * (T - 30 - begin)).long()
            return boxes.to(device), torch.stack([begin, begin + length], 1).to(device)
        (a, sa), (b, sb) = tracks(p), tracks(q)
        return dict(a=a, sa=sa, b=b, sb=sb)
    return make


def _viou_impls(device):
    def eager(inp):
        return (reference.trajectory_viou(inp["a"], inp["sa"], inp["b"], inp["sb"]),)

    def build() -> list[Implementation]:
        impls = [Implementation("eager", eager, "baseline"), Implementation("compiled", torch.compile(eager), "baseline")]
        for backend in ("cpu", "cuda", "triton"):
            if _backends.unavailable_reason(backend, torch.device(device)) is None and not (
                    backend == "triton" and device == "cpu"):  # the interpreter is not the kernel
                impls.append(Implementation(backend, lambda inp, b=backend: (ops.trajectory_viou(
                    inp["a"], inp["sa"], inp["b"], inp["sb"], backend=b),)))
        return impls
    return build


def _register_viou(P, Q, T, device, target):
    register(BenchCase(
        family="vidvrd", op="trajectory_viou", label=f"P={P} Q={Q} T={T}", device=device, dtype=torch.float32,
        make_inputs=_viou_inputs(P, Q, T, device), implementations=_viou_impls(device),
        bytes_moved=lambda inp: (inp["a"].numel() + inp["b"].numel()) * 4 + inp["a"].shape[0] * inp["b"].shape[0] * 4,
        unit_bytes=lambda inp: inp["a"].shape[0] * inp["b"].shape[0] * 4,
        flops=lambda inp: 12 * inp["a"].shape[0] * inp["b"].shape[0] * inp["a"].shape[1],
        tolerance=dict(atol=1e-6, rtol=1e-6), target=target))


# ---- the helper's per-frame loop as the baseline ---------------------------------------------------

def _loop_inputs(P, Q, T):
    """_viou_inputs plus every trajectory as the helper holds it: a list of boxes over its own span."""
    tensors = _viou_inputs(P, Q, T, "cpu")

    def make(scale: float) -> dict:
        inp = tensors(scale)
        for side, span in (("a", "sa"), ("b", "sb")):
            inp[f"{side}_lists"] = [(inp[side][i, b:e].tolist(), [b, e]) for i, (b, e) in enumerate(inp[span].tolist())]
        return inp
    return make


def _loop_impls():
    def loop(inp):
        rows = [[reference.viou_pair_loop(ta, da, tb, db) for tb, db in inp["b_lists"]] for ta, da in inp["a_lists"]]
        return (torch.tensor(rows, dtype=torch.float32),)

    def build() -> list[Implementation]:
        return [Implementation("eager", loop, "baseline"),  # compiled: n/a (a Python loop)
                Implementation("cpu", lambda inp: (ops.trajectory_viou(inp["a"], inp["sa"], inp["b"], inp["sb"],
                                                                       backend="cpu"),))]
    return build


def _register_viou_loop(P, Q, T):
    """P * Q ~ 2,000 pairs: the loop runs on every pair (nothing extrapolated) in about a second."""
    register(BenchCase(
        family="vidvrd", op="trajectory_viou", label=f"P={P} Q={Q} T={T} (eager = the helper's per-frame Python loop)",
        device="cpu", dtype=torch.float32, make_inputs=_loop_inputs(P, Q, T), implementations=_loop_impls(),
        bytes_moved=lambda inp: (inp["a"].numel() + inp["b"].numel()) * 4 + inp["a"].shape[0] * inp["b"].shape[0] * 4,
        unit_bytes=lambda inp: inp["a"].shape[0] * inp["b"].shape[0] * 4,
        flops=lambda inp: 12 * inp["a"].shape[0] * inp["b"].shape[0] * inp["a"].shape[1],
        tolerance=dict(atol=0.0, rtol=0.0), target=">= 50x per-frame loop", measure_memory=False))


# ---- evaluate against the Python port of the helper -------------------------------------------------

@functools.lru_cache(maxsize=4)
def _evaluate_data(scale: float, on_triplet: bool) -> dict:
    """vidvrd.md 7: 100 VidOR-style videos, T ~ U[300, 1800], 200 predictions per video.
    on_triplet: the predictions are degraded copies of the GT (box jitter, shifts of up to 8
    frames, 20 % flipped predicates, 10 % dropped), several per GT relation as a model proposes
    several spans per pair, so most have same-triplet candidates (the case that makes the helper
    slow); otherwise one copy plus subject/object-swapped junk, which rarely has a candidate."""
    from ..vidvrd import degrade_predictions, groundtruth_from_annotations, make_vidvrd_like

    annos = make_vidvrd_like(max(2, int(100 * scale)), seed=0, style="vidor", frame_range=(300, 1800),
                             edge_cases=("duplicate_triplets",))
    gt = groundtruth_from_annotations(annos)
    degrade = dict(box_sigma=4.0, shift=8, flip_p=0.2, drop_p=0.1)
    if not on_triplet:
        return dict(gt=gt, pred=degrade_predictions(gt, seed=0, extra=200, cap=200, **degrade)["results"])
    copies = [degrade_predictions(gt, seed=s, cap=10**6, **degrade)["results"] for s in range(12)]
    rng = np.random.default_rng(0)
    pred = {}
    for vid in gt:
        pool = [r for c in copies for r in c[vid]][:200]
        order = rng.permutation(len(pool))
        pred[vid] = [dict(pool[k], score=1 - rank / len(pool) + float(rng.uniform(0, 1e-3)))
                     for rank, k in enumerate(order)]
    return dict(gt=gt, pred=pred)


def _metrics(fn):
    return lambda inp: (torch.tensor(list(fn(inp["gt"], inp["pred"]).values()), dtype=torch.float64),)


def _evaluate_impls() -> list[Implementation]:
    from ..vidvrd import evaluate

    return [Implementation("eager", _metrics(vidvrd_eval.evaluate), "baseline"),
            Implementation("cpu", _metrics(lambda g, p: evaluate(g, p, backend="cpu")))]


_register_viou(200, 50, 450, "cpu", ">= 50x per-frame loop; >= 2x eager")
_register_viou(1000, 100, 900, "cpu", ">= 50x per-frame loop; >= 2x eager")
_register_viou(4096, 512, 1000, "cuda", "ratio vs eager and compiled")
_register_viou_loop(64, 32, 450)
for on_triplet, what in ((True, "degraded GT copies"), (False, "1 GT copy + swapped junk")):
    register(BenchCase(
        family="vidvrd", op="evaluate", device="cpu", dtype=torch.float64,
        label=f"100 videos x 200 predictions, vidor T 300-1800, {what} (eager = Python port of the helper)",
        make_inputs=lambda scale, t=on_triplet: _evaluate_data(scale, t), implementations=_evaluate_impls,
        bytes_moved=lambda inp: 0, unit_bytes=lambda inp: 1, tolerance=dict(atol=0.0, rtol=0.0),
        target=">= 20x the Python port; metrics ==" if on_triplet else "reported (few candidates); metrics ==",
        measure_memory=False))
