"""Benchmark cases of expm, symmetric_expm, ipe_transform and composite_symmetry in the vae family
(vae.md section 7: the CPU cases and the H200 expm cases, plus CUDA cases of the other ops), all
forward + backward in float32 with seeded inputs: A, w = randn/sqrt(n); z and upstream gradients =
randn; codebook = randn(K, n, n)/sqrt(n); weights = switch * slot-softmax (switch ~ Bernoulli(1/2)
per pair and section, softmax of randn over 16 slots)."""
from __future__ import annotations

import torch

from .. import ops
from ..ops import _backends
from ..reference import vae_ops as reference
from .registry import BenchCase, Implementation, register

SLOTS = 16
PRODUCTS = 7  # products of one exponential on these inputs (degree cost + s, vae.md 6)


def _backends_for(device: str) -> list[str]:
    # Triton under the CPU interpreter measures the interpreter, not the kernel.
    return [b for b in ("cpu", "cuda", "triton") if _backends.unavailable_reason(b, torch.device(device)) is None
            and not (b == "triton" and device == "cpu")]


def _fwd_bwd(fn, names):
    """run(inputs): fn on the named inputs (leaves requiring grad), backward with the seeded upstream
    gradients inputs["up"]; returns the outputs and every input gradient."""
    def run(inputs: dict) -> tuple:
        leaves = [inputs[k].detach().requires_grad_(True) for k in names]
        out = fn(*leaves)
        out = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(out, inputs["up"])
        return tuple(o.detach() for o in out) + tuple(x.grad for x in leaves)
    return run


def _implementations(device, eager, op, names):
    def build() -> list[Implementation]:
        impls = [Implementation("eager", _fwd_bwd(eager, names), "baseline"),
                 Implementation("compiled", _fwd_bwd(torch.compile(eager), names), "baseline")]
        for backend in _backends_for(device):
            impls.append(Implementation(backend, _fwd_bwd(lambda *x, be=backend: op(*x, backend=be), names)))
        return impls
    return build


def _scaled(count: int, scale: float, least: int = 2) -> int:
    return max(least, int(count * scale))


# ---- expm and symmetric_expm -----------------------------------------------------------------
def _matrix_inputs(batch, n, device):
    def make(scale: float) -> dict:
        gen = torch.Generator().manual_seed(0)
        b = _scaled(batch, scale)
        a = torch.randn(b, n, n, generator=gen) / n**0.5
        up = torch.randn(b, n, n, generator=gen)
        return dict(a=a.to(device), up=(up.to(device),))
    return make


def _register_matrix(op_name, batch, n, device, target, eager, op, flops_per_matrix):
    register(BenchCase(
        family="vae", op=op_name, label=f"{batch} x {n}x{n} fwd+bwd", device=device, dtype=torch.float32,
        make_inputs=_matrix_inputs(batch, n, device), implementations=_implementations(device, eager, op, ["a"]),
        bytes_moved=lambda inp: 4 * 4 * inp["a"].numel(),  # a, E, upstream, a_bar
        unit_bytes=lambda inp: 4 * inp["a"].numel(),
        flops=lambda inp: inp["a"].shape[0] * flops_per_matrix(n),
        tolerance=dict(atol=1e-4, rtol=1e-4), target=target))


def _expm_flops(n):  # forward PRODUCTS products of 2n^3, backward ~3x forward
    return 4 * PRODUCTS * 2 * n**3


def _symmetric_flops(n):  # eigh ~9n^3, reconstruct 2n^3, backward 4 products
    return 9 * n**3 + 2 * n**3 + 4 * 2 * n**3


# ---- ipe_transform ---------------------------------------------------------------------------
def _ipe_inputs(B, n, U, K, device):
    def make(scale: float) -> dict:
        gen = torch.Generator().manual_seed(0)
        b = _scaled(B, scale, 8)
        z = torch.randn(b, n, generator=gen)
        w = torch.randn(U, K, n, n, generator=gen) / n**0.5
        up = (torch.randn(U, b, n, generator=gen), torch.randn(U, generator=gen))
        return dict(z=z.to(device), w=w.to(device), up=tuple(t.to(device) for t in up))
    return make


# The check is against eager fp32, whose matrix_exp backward is itself off: measured against float64,
# the w gradient of eager ipe_transform at n = 64 has 1.4e-4 relative error (pyfastlab 1.5e-6), and
# the codebook gradient of eager composite_symmetry 8e-6 (pyfastlab 2.4e-6). Tolerances allow that.
_LOOSE = dict(atol=5e-2, rtol=1e-3)


def _register_ipe(B, n, device, target, U=3, K=2):
    register(BenchCase(
        family="vae", op="ipe_transform", label=f"z [{B}, {n}] U={U} K={K} fwd+bwd", device=device,
        dtype=torch.float32, make_inputs=_ipe_inputs(B, n, U, K, device),
        implementations=_implementations(device, reference.ipe_transform, ops.ipe_transform, ["z", "w"]),
        bytes_moved=lambda inp: 4 * (4 * inp["z"].numel() * (1 + U) // 2 + 3 * inp["w"].numel()),
        unit_bytes=lambda inp: 4 * U * inp["z"].numel(),
        flops=lambda inp: U * K * _symmetric_flops(n) + 3 * 2 * U * inp["z"].shape[0] * n * n,
        tolerance=_LOOSE, target=target))


# ---- composite_symmetry ----------------------------------------------------------------------
def _composite_inputs(P, K, n, device):
    def make(scale: float) -> dict:
        gen = torch.Generator().manual_seed(0)
        p = _scaled(P, scale, 4)
        sections = K // SLOTS
        codebook = torch.randn(K, n, n, generator=gen) / n**0.5
        switch = (torch.rand(p, sections, 1, generator=gen) < 0.5).float()
        slots = torch.softmax(torch.randn(p, sections, SLOTS, generator=gen), -1)
        weights = (switch * slots).reshape(p, K)
        z1, z2 = torch.randn(p, n, generator=gen), torch.randn(p, n, generator=gen)
        up = (torch.randn(p, n, generator=gen), torch.randn(p, n, generator=gen))
        return dict(codebook=codebook.to(device), weights=weights.to(device), z1=z1.to(device), z2=z2.to(device),
                    up=tuple(t.to(device) for t in up))
    return make


def _register_composite(P, K, n, device, target):
    register(BenchCase(
        family="vae", op="composite_symmetry", label=f"P={P} K={K} n={n} fwd+bwd", device=device,
        dtype=torch.float32, make_inputs=_composite_inputs(P, K, n, device),
        implementations=_implementations(device, reference.composite_symmetry, ops.composite_symmetry,
                                         ["codebook", "weights", "z1", "z2"]),
        bytes_moved=lambda inp: 4 * (3 * inp["codebook"].numel() + 3 * inp["weights"].numel()
                                     + 2 * inp["weights"].shape[0] * n * n),
        unit_bytes=lambda inp: 4 * inp["weights"].shape[0] * n * n,
        flops=lambda inp: inp["weights"].shape[0] * (3 * 2 * K * n * n + 5 * PRODUCTS * 2 * n**3),
        tolerance=_LOOSE, target=target))


_register_matrix("expm", 1024, 10, "cpu", ">= 3x eager (matrix_exp)", reference.expm, ops.expm, _expm_flops)
_register_matrix("expm", 256, 64, "cpu", ">= 1.5x eager (matrix_exp)", reference.expm, ops.expm, _expm_flops)
_register_matrix("symmetric_expm", 6, 10, "cpu", ">= 2x eager", reference.symmetric_expm, ops.symmetric_expm,
                 _symmetric_flops)
_register_matrix("symmetric_expm", 6, 64, "cpu", ">= 2x eager", reference.symmetric_expm, ops.symmetric_expm,
                 _symmetric_flops)
_register_ipe(256, 10, "cpu", ">= 3x eager")
_register_ipe(256, 64, "cpu", ">= 3x eager")
_register_composite(128, 160, 10, "cpu", ">= 3x eager")
_register_composite(128, 1024, 64, "cpu", ">= 3x eager")
_register_matrix("expm", 65536, 10, "cuda", ">= 5x eager (matrix_exp)", reference.expm, ops.expm, _expm_flops)
_register_matrix("expm", 4096, 64, "cuda", ">= 5x eager (matrix_exp)", reference.expm, ops.expm, _expm_flops)
_register_ipe(256, 64, "cuda", "ratio vs eager and compiled, absolute time")
_register_composite(128, 1024, 64, "cuda", "ratio vs eager and compiled, absolute time")
