"""Benchmark cases of trajectory_viou and evaluate in the vidvrd family (vidvrd.md section 7)."""
from __future__ import annotations

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


def _evaluate_inputs(scale: float) -> dict:
    from ..vidvrd import degrade_predictions, groundtruth_from_annotations, make_vidvrd_like

    gt = groundtruth_from_annotations(make_vidvrd_like(max(2, int(100 * scale)), seed=0, style="vidor"))
    pred = degrade_predictions(gt, seed=0, box_sigma=4.0, shift=8, flip_p=0.2, drop_p=0.1, extra=20)
    return dict(gt=gt, pred=pred["results"])


def _metrics(fn):
    return lambda inp: (torch.tensor(list(fn(inp["gt"], inp["pred"]).values()), dtype=torch.float64),)


def _evaluate_impls() -> list[Implementation]:
    from ..vidvrd import evaluate

    return [Implementation("eager", _metrics(vidvrd_eval.evaluate), "baseline"),
            Implementation("cpu", _metrics(lambda g, p: evaluate(g, p, backend="cpu")))]


_register_viou(200, 50, 450, "cpu", ">= 50x per-frame loop; >= 2x eager")
_register_viou(1000, 100, 900, "cpu", ">= 50x per-frame loop; >= 2x eager")
_register_viou(4096, 512, 1000, "cuda", "ratio vs eager and compiled")
register(BenchCase(
    family="vidvrd", op="evaluate", label="100 videos, vidor style, degraded GT (eager = Python port of the helper)",
    device="cpu", dtype=torch.float64, make_inputs=_evaluate_inputs, implementations=_evaluate_impls,
    bytes_moved=lambda inp: 0, unit_bytes=lambda inp: 1, tolerance=dict(atol=0.0, rtol=0.0),
    target=">= 20x the Python port; metrics =="))
