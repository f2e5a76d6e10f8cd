"""Benchmark cases of the mixup ops (mixup.md section 7): pair_mix PM-1, mixed CE CE-1/CE-2 (each
with a randperm partner and a random matching), uniformity UN-1 on CPU, and the H200 cases G-CE
and G-UN. UN-2 (N = 16384 under a 2 GiB address-space cap, reference OOM) needs a subprocess per
implementation and is not a bench case: the slow test in tests/ops/test_mixup_ops.py runs it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import ops
from ..ops import _backends
from ..reference import mixup as reference
from .registry import BenchCase, Implementation, register

T = 2.0


def _backends_for(device: str) -> list[str]:
    # Triton under the CPU interpreter measures the interpreter, not the kernel.
    return [b for b in ("cpu", "cuda", "triton") if _backends.unavailable_reason(b, torch.device(device)) is None
            and not (b == "triton" and device == "cpu")]


def _matching(n: int, gen: torch.Generator) -> torch.Tensor:
    sigma, p = torch.randperm(n, generator=gen), torch.arange(n)
    h = n // 2
    p[sigma[0:2 * h:2]], p[sigma[1:2 * h:2]] = sigma[1:2 * h:2], sigma[0:2 * h:2]
    return p


def _rows_inputs(B, D, dtype, device, partner, scale_x=1.0, classes=None):
    def make(scale: float) -> dict:
        n = max(8, int(B * scale))
        gen = torch.Generator().manual_seed(0)
        x = (scale_x * torch.randn(n, D, generator=gen)).to(dtype)
        p = torch.randperm(n, generator=gen) if partner == "randperm" else _matching(n, gen)
        inp = dict(x=x.to(device), p=p.to(device), lam=torch.rand(n, generator=gen).to(device))
        if classes is not None:
            inp["y"] = torch.randint(0, D, (n,), generator=gen).to(device)
        return inp
    return make


def _with_grad(fn, lam_grad=True):
    def run(inp: dict) -> tuple:
        x = inp["x"].detach().requires_grad_(True)
        lam = inp["lam"].detach().requires_grad_(lam_grad)
        out = fn(x, inp, lam)
        out.backward(torch.ones_like(out))
        return (out.detach(), x.grad) + ((lam.grad,) if lam_grad else ())
    return run


def _impls(eager, op, device):
    def build() -> list[Implementation]:
        impls = [Implementation("eager", _with_grad(eager), "baseline"),
                 Implementation("compiled", _with_grad(torch.compile(eager)), "baseline")]
        for backend in _backends_for(device):
            impls.append(Implementation(backend, _with_grad(lambda x, inp, lam, b=backend: op(x, inp, lam, b))))
        return impls
    return build


# ---- pair_mix ------------------------------------------------------------------------------------

def _pm_eager(x, inp, lam):
    return torch.lerp(x.index_select(0, inp["p"]), x, lam[:, None].to(x.dtype))


def _register_pm(B, D, partner, device, dtype, target):
    bd = lambda inp: inp["x"].numel() * inp["x"].element_size()
    register(BenchCase(
        family="mixup", op="pair_mix", label=f"B={B} D={D} lam[B] {partner} fwd+bwd", device=device, dtype=dtype,
        make_inputs=_rows_inputs(B, D, dtype, device, partner),
        implementations=_impls(_pm_eager, lambda x, inp, lam, b: ops.pair_mix(x, inp["p"], lam, backend=b), device),
        bytes_moved=lambda inp: 8 * bd(inp), unit_bytes=bd,  # 8 BD passes (spec 6)
        flops=lambda inp: 6 * inp["x"].numel(), tolerance=dict(atol=1e-4, rtol=1e-5), target=target))


# ---- mixed_logits_cross_entropy ------------------------------------------------------------------

def _ce_eager(z, inp, lam):
    return F.cross_entropy(torch.lerp(z.index_select(0, inp["p"]), z, lam[:, None].to(z.dtype)), inp["y"])


def _register_ce(B, C, partner, device, dtype, target, case_id):
    bc = lambda inp: inp["x"].numel() * inp["x"].element_size()
    register(BenchCase(
        family="mixup", op="mixed_logits_cross_entropy", label=f"{case_id} B={B} C={C} lam[B] {partner} fwd+bwd",
        device=device, dtype=dtype, make_inputs=_rows_inputs(B, C, dtype, device, partner, 3.0, classes=True),
        implementations=_impls(_ce_eager, lambda z, inp, lam, b: ops.mixed_logits_cross_entropy(
            z, inp["p"], lam, inp["y"], backend=b), device),
        bytes_moved=lambda inp: 8 * bc(inp), unit_bytes=bc,  # 8 BC passes (spec 6; floor 3 BC)
        flops=lambda inp: 12 * inp["x"].numel(),
        tolerance=dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-4),
        target=target))


# ---- uniformity_loss ------------------------------------------------------------------------------

def _un_inputs(N, D, dtype, device):
    def make(scale: float) -> dict:
        n = max(64, int(N * scale))
        gen = torch.Generator().manual_seed(0)
        return dict(x=F.normalize(torch.randn(n, D, generator=gen), dim=1).to(dtype).to(device))
    return make


def _un_run(fn):
    def run(inp: dict) -> tuple:
        x = inp["x"].detach().requires_grad_(True)
        out = fn(x)
        out.backward()
        return out.detach(), x.grad
    return run


def _un_impls(device):
    def build() -> list[Implementation]:
        eager = lambda x: reference.uniformity_loss_pdist(x, T)
        impls = [Implementation("eager", _un_run(eager), "baseline"),
                 Implementation("compiled", _un_run(torch.compile(eager)), "baseline")]
        for backend in _backends_for(device):
            impls.append(Implementation(backend, _un_run(lambda x, b=backend: ops.uniformity_loss(x, t=T, backend=b))))
        return impls
    return build


def _register_un(N, D, device, dtype, target, case_id):
    n2d = lambda inp: inp["x"].shape[0] ** 2 * inp["x"].shape[1]
    register(BenchCase(
        family="mixup", op="uniformity_loss", label=f"{case_id} N={N} D={D} fwd+bwd", device=device, dtype=dtype,
        make_inputs=_un_inputs(N, D, dtype, device), implementations=_un_impls(device),
        bytes_moved=lambda inp: 2 * inp["x"].numel() * inp["x"].element_size(),
        unit_bytes=lambda inp: inp["x"].numel() * inp["x"].element_size(),  # peak memory in units of x (O(N D))
        flops=lambda inp: 4 * n2d(inp),  # N^2 D symmetric forward + 3 N^2 D symmetric backward (spec 7)
        tolerance=dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-4),
        target=target))


_register_pm(1024, 2048, "randperm", "cpu", torch.float32, "PM-1: >= 2x eager")
_register_pm(1024, 2048, "matching", "cpu", torch.float32, "PM-1 (matching row)")
_register_ce(1024, 1000, "randperm", "cpu", torch.float32, ">= 3x eager, >= 1.3x compiled", "CE-1")
_register_ce(1024, 1000, "matching", "cpu", torch.float32, "(matching row)", "CE-1")
_register_ce(4096, 100, "randperm", "cpu", torch.float32, ">= 3x eager, >= 1.3x compiled", "CE-2")
_register_ce(4096, 100, "matching", "cpu", torch.float32, "(matching row)", "CE-2")
_register_un(4096, 128, "cpu", torch.float32, ">= 2x eager; extra memory O(N D)", "UN-1")
_register_ce(8192, 32000, "randperm", "cuda", torch.bfloat16, "GB/s vs copy bandwidth", "G-CE")
_register_un(65536, 256, "cuda", torch.bfloat16, "TFLOP/s vs bf16 GEMM", "G-UN")
