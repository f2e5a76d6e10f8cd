"""Benchmark cases of kd_loss in the distill family (distill.md section 7, case 4, and a GPU case)."""
from __future__ import annotations

import torch

from .. import ops
from ..ops import _backends
from ..reference import kd as reference
from .registry import BenchCase, Implementation, register

TEMPERATURE = 4.0
WEIGHTS = dict(soft_weight=0.5, hard_weight=0.5)


def _inputs(n_rows: int, n_classes: int, dtype: torch.dtype, device: str):
    def make(scale: float) -> dict:
        n = max(8, int(n_rows * scale))
        gen = torch.Generator().manual_seed(0)
        student = (2 * torch.randn(n, n_classes, generator=gen)).to(dtype)
        teacher = (3 * torch.randn(n, n_classes, generator=gen)).to(dtype)
        target = torch.randint(0, n_classes, (n,), generator=gen)
        return dict(student=student.to(device), teacher=teacher.to(device), target=target.to(device))
    return make


def _fwd_bwd(loss_fn):
    def run(inputs: dict) -> tuple:
        s = inputs["student"].detach().requires_grad_(True)
        out = loss_fn(s, inputs)
        out.backward()
        return out.detach(), s.grad
    return run


def _backends_for(device: str) -> list[str]:
    # Triton under the CPU interpreter measures the interpreter, not the kernel.
    return [b for b in ("cpu", "cuda", "triton") if _backends.unavailable_reason(b, torch.device(device)) is None
            and not (b == "triton" and device == "cpu")]


def _implementations(device: str):
    def eager(s, inp):
        return reference.kd_loss_eager(s, inp["teacher"], inp["target"], temperature=TEMPERATURE, **WEIGHTS)

    def build() -> list[Implementation]:
        impls = [Implementation("eager", _fwd_bwd(eager), "baseline"),
                 Implementation("compiled", _fwd_bwd(torch.compile(eager)), "baseline")]
        for backend in _backends_for(device):
            fn = lambda s, inp, b=backend: ops.kd_loss(s, inp["teacher"], inp["target"], temperature=TEMPERATURE,
                                                       backend=b, **WEIGHTS)
            impls.append(Implementation(backend, _fwd_bwd(fn)))
        return impls
    return build


def _nc_bytes(factor: int):
    return lambda inp: factor * inp["student"].numel() * inp["student"].element_size()


def _register(n_rows, n_classes, dtype, device, target):
    register(BenchCase(
        family="distill", op="kd_loss", label=f"{n_rows}x{n_classes} T=4 soft 0.5 + hard 0.5", device=device,
        dtype=dtype, make_inputs=_inputs(n_rows, n_classes, dtype, device), implementations=_implementations(device),
        # one fused pass reads s and t and writes the gradient; the backward reads and writes it once more
        bytes_moved=_nc_bytes(5), unit_bytes=_nc_bytes(1),
        # about 3 exponentials and 20 other operations per element, forward and backward
        flops=lambda inp: 25 * inp["student"].numel(),
        tolerance=dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-4),
        target=target))


_register(4096, 1000, torch.float32, "cpu", ">= 2x eager")
_register(8192, 32000, torch.bfloat16, "cuda", ">= 80% of copy bandwidth")
