"""Benchmark cases of linear_cka and cka_matrix (distill.md section 7, cases 1, 2, 3, 3b, 5, 6)."""
from __future__ import annotations

import torch

from .. import ops
from ..ops import _backends
from ..reference import cka as reference
from .registry import BenchCase, Implementation, register


def _backends_for(device: str) -> list[str]:
    # Triton under the CPU interpreter measures the interpreter, not the kernel.
    return [b for b in ("cpu", "cuda", "triton") if _backends.unavailable_reason(b, torch.device(device)) is None
            and not (b == "triton" and device == "cpu")]


def _pair_inputs(shape, dtype, device):
    """x, y of one shape; y shares a random projection of x so CKA is far from its floor."""
    def make(scale: float) -> dict:
        batch = shape[:-2]
        if batch:
            batch = (max(1, int(batch[0] * scale)),) + batch[1:]
        d = shape[-1] if batch else max(64, int(shape[-1] * scale))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(*batch, shape[-2], d, generator=gen)
        y = 0.5 * x + torch.randn(x.shape, generator=gen)
        return dict(x=x.to(dtype).to(device), y=y.to(dtype).to(device))
    return make


def _fwd_bwd(fn):
    def run(inputs: dict) -> tuple:
        x = inputs["x"].detach().requires_grad_(True)
        out = fn(x, inputs["y"])
        out.backward(torch.ones_like(out))
        return out.detach(), x.grad
    return run


def _pair_implementations(device: str):
    def build() -> list[Implementation]:
        impls = [Implementation("eager", _fwd_bwd(reference.linear_cka_eager), "baseline"),
                 Implementation("compiled", _fwd_bwd(torch.compile(reference.linear_cka_eager)), "baseline")]
        if device == "cuda":  # the same-dtype bmm of the raw Grams: the GEMM work alone (nothing to compare)
            impls.append(Implementation("bmm", lambda inp: (torch.bmm(inp["x"], inp["x"].transpose(1, 2)), ())[1],
                                        "baseline"))
        for backend in _backends_for(device):
            impls.append(Implementation(backend, _fwd_bwd(lambda x, y, b=backend: ops.linear_cka(x, y, backend=b))))
        return impls
    return build


def _pair_flops(inp) -> int:
    x, y = inp["x"], inp["y"]
    problems, n = x.numel() // (x.shape[-2] * x.shape[-1]), x.shape[-2]
    return 2 * problems * n * n * (x.shape[-1] + y.shape[-1]) + 2 * problems * n * n * x.shape[-1]


def _bytes(names, factor=1):
    return lambda inp: factor * sum(inp[k].numel() * inp[k].element_size() for k in names)


def _register_pair(shape, dtype, device, target):
    label = "x".join(map(str, shape))
    register(BenchCase(
        family="distill", op="linear_cka", label=label, device=device, dtype=dtype,
        make_inputs=_pair_inputs(shape, dtype, device), implementations=_pair_implementations(device),
        bytes_moved=_bytes(("x", "y"), 2), unit_bytes=_bytes(("x",)), flops=_pair_flops,
        tolerance=dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-3),
        target=target))


def _layer_inputs(layers, n, d, dtype, device):
    def make(scale: float) -> dict:
        rows = max(8, int(n * scale))
        gen = torch.Generator().manual_seed(1)
        base = torch.randn(rows, d, generator=gen)
        xs = torch.stack([base + 0.3 * (i + 1) * torch.randn(rows, d, generator=gen) for i in range(layers)])
        ys = torch.stack([base @ torch.randn(d, d, generator=gen) / d**0.5 + torch.randn(rows, d, generator=gen)
                          for _ in range(layers)])
        return dict(xs=xs.to(dtype).to(device), ys=ys.to(dtype).to(device))
    return make


def _matrix_implementations(device: str, debiased: bool, loop_subset: int | None):
    def loop(pair_fn):
        def run(inp) -> tuple:
            xs, ys = inp["xs"], inp["ys"]
            rows = xs if loop_subset is None else xs[:loop_subset]
            return (torch.stack([torch.stack([pair_fn(x, y) for y in ys]) for x in rows]),)
        return run

    def build() -> list[Implementation]:
        eager = lambda x, y: reference.linear_cka_eager(x, y, debiased=debiased)
        compiled = torch.compile(eager)
        impls = [Implementation("eager", loop(eager), "baseline"),
                 Implementation("compiled", loop(compiled), "baseline")]
        if device == "cpu":
            impls.append(Implementation("loop of ops.linear_cka",
                                        loop(lambda x, y: ops.linear_cka(x, y, debiased=debiased)), "baseline"))
        else:  # the same-dtype bmm of the L + M raw Grams (nothing to compare)
            def grams(inp) -> tuple:
                layers = torch.cat([inp["xs"], inp["ys"]])
                torch.bmm(layers, layers.transpose(1, 2))
                return ()
            impls.append(Implementation("bmm", grams, "baseline"))
        for backend in _backends_for(device):
            fn = lambda inp, b=backend: (ops.cka_matrix(inp["xs"], inp["ys"], debiased=debiased, backend=b)
                                         [:loop_subset],)
            impls.append(Implementation(backend, fn))
        return impls
    return build


def _matrix_flops(inp) -> int:
    (layers, n, d), m = inp["xs"].shape, inp["ys"].shape[0]
    return 2 * (layers + m) * n * n * d + 2 * layers * m * n * n


def _register_matrix(layers, n, d, dtype, device, debiased, target, loop_subset=None):
    register(BenchCase(
        family="distill", op="cka_matrix", label=f"{layers}x{layers} n={n} d={d}" + (" debiased" if debiased else ""),
        device=device, dtype=dtype, make_inputs=_layer_inputs(layers, n, d, dtype, device),
        implementations=_matrix_implementations(device, debiased, loop_subset),
        bytes_moved=_bytes(("xs", "ys")), unit_bytes=_bytes(("xs",)), flops=_matrix_flops,
        tolerance=dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-3),
        target=target))


_register_pair((32, 128, 768), torch.float32, "cpu", ">= 2x eager, >= 1.2x compiled")
_register_pair((32, 98304), torch.float32, "cpu", ">= 2x eager")
_register_matrix(12, 512, 768, torch.float32, "cpu", False, ">= 10x loop")
_register_matrix(12, 512, 768, torch.float32, "cpu", True, ">= 10x loop")
for _dtype in (torch.bfloat16, torch.float32):
    _register_pair((256, 128, 768), _dtype, "cuda", "report TFLOP/s (% of the Grams' bmm) and GB/s")
    # Case 6 at n = 2048 (spec: 4096) keeps the eager loop's n x n temporaries and the Gram
    # stacks within a few GB; the loop baseline runs the first 2 rows of pairs.
    _register_matrix(24, 2048, 1024, _dtype, "cuda", False, ">= 60% of the Grams' bmm TFLOP/s", loop_subset=2)
