"""Benchmark cases of the continual family (continual.md section 7)."""
from __future__ import annotations

import importlib.util

import torch

from .. import ops
from ..ops import _backends
from ..reference import continual as reference
from .registry import BenchCase, Implementation, register

N_TASKS = 10


def _ce_inputs(n_rows: int, n_classes: int, dtype: torch.dtype, device: str, masked: bool):
    """Task masks [10, C], one block of C/10 classes per task; 3/4 stream rows of the last task
    (targets in its block), 1/4 replay rows (row_group -1, any target)."""
    def make(scale: float) -> dict:
        n = max(8, int(n_rows * scale))
        gen = torch.Generator().manual_seed(0)
        block = max(1, n_classes // N_TASKS)
        active = torch.arange(n_classes)[None, :] // block == torch.arange(N_TASKS)[:, None]
        n_stream = 3 * n // 4
        row_group = torch.cat([torch.full((n_stream,), N_TASKS - 1), torch.full((n - n_stream,), -1)])
        target = torch.cat([(N_TASKS - 1) * block + torch.randint(0, block, (n_stream,), generator=gen),
                            torch.randint(0, n_classes, (n - n_stream,), generator=gen)]).clamp(max=n_classes - 1)
        logits = torch.randn(n, n_classes, generator=gen).to(dtype)
        inputs = dict(logits=logits, target=target, active=active, row_group=row_group)
        if not masked:
            inputs.update(active=None, row_group=None)
        return {k: (v.to(device) if v is not None else None) for k, v in inputs.items()}
    return make


def _fwd_bwd(loss_fn):
    def run(inputs: dict) -> tuple:
        z = inputs["logits"].detach().requires_grad_(True)
        out = loss_fn(z, inputs)
        out.backward(inputs.get("upstream"))
        return out.detach(), z.grad
    return run


def _backends_for(device: str) -> list[str]:
    # Triton under the CPU interpreter measures the interpreter, not the kernel.
    return [b for b in ("cpu", "cuda", "triton") if _backends.unavailable_reason(b, torch.device(device)) is None
            and not (b == "triton" and device == "cpu")]


def _ce_implementations(mode: str, device: str, masked: bool):
    def eager(z, inp):
        if not masked:
            return torch.nn.functional.cross_entropy(z, inp["target"])
        return reference.masked_cross_entropy_eager(z, inp["target"], inp["active"], inp["row_group"], mode=mode)

    def build() -> list[Implementation]:
        impls = [Implementation("eager", _fwd_bwd(eager), "baseline"),
                 Implementation("compiled", _fwd_bwd(torch.compile(eager)), "baseline")]
        for backend in _backends_for(device):
            fn = lambda z, inp, b=backend: ops.masked_cross_entropy(
                z, inp["target"], inp["active"], inp["row_group"], mode=mode, backend=b)
            impls.append(Implementation(backend, _fwd_bwd(fn)))
        if device == "cuda" and not masked and importlib.util.find_spec("liger_kernel") is not None:
            from liger_kernel.transformers.functional import liger_cross_entropy

            # Liger writes its gradient into the logits: a fresh clone each round (untimed would be
            # fairer; the clone is one extra copy of N*C and is counted against Liger).
            liger = lambda z, inp: liger_cross_entropy(z.clone(), inp["target"])
            impls.append(Implementation("liger", _fwd_bwd(liger), "baseline"))
        return impls
    return build


def _nc_bytes(factor: int):
    return lambda inp: factor * inp["logits"].numel() * inp["logits"].element_size()


def _register_cross_entropy(n_rows, n_classes, dtype, device, mode, masked, target):
    label = f"{n_rows}x{n_classes} " + (("const -inf" if mode == "const" else "detach") if masked else "unmasked")
    register(BenchCase(
        family="continual", op="masked_cross_entropy", label=label, device=device, dtype=dtype,
        make_inputs=_ce_inputs(n_rows, n_classes, dtype, device, masked),
        implementations=_ce_implementations(mode, device, masked),
        bytes_moved=_nc_bytes(2), unit_bytes=_nc_bytes(1),
        flops=lambda inp: 9 * inp["logits"].numel(),
        tolerance=dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-4),
        target=target))


def _softmax_inputs(n_rows, n_classes, dtype, device):
    base = _ce_inputs(n_rows, n_classes, dtype, device, masked=True)

    def make(scale: float) -> dict:
        inputs = base(scale)
        gen = torch.Generator().manual_seed(1)
        inputs["upstream"] = torch.randn(inputs["logits"].shape, generator=gen).to(dtype).to(device)
        return inputs
    return make


def _softmax_implementations(log: bool, device: str):
    def eager(z, inp):
        return reference.masked_softmax_eager(z, inp["active"], inp["row_group"], log=log)

    def build() -> list[Implementation]:
        impls = [Implementation("eager", _fwd_bwd(eager), "baseline"),
                 Implementation("compiled", _fwd_bwd(torch.compile(eager)), "baseline")]
        for backend in _backends_for(device):
            fn = lambda z, inp, b=backend: ops.masked_softmax(z, inp["active"], inp["row_group"], log=log, backend=b)
            impls.append(Implementation(backend, _fwd_bwd(fn)))
        return impls
    return build


def _pgd_inputs(shape, dtype, device):
    def make(scale: float) -> dict:
        n = max(2, int(shape[0] * scale))
        gen = torch.Generator().manual_seed(2)
        x_clean = torch.rand((n,) + shape[1:], generator=gen).to(dtype)
        x_adv = (x_clean + 0.01 * torch.randn(x_clean.shape, generator=gen)).to(dtype)
        grad = torch.randn(x_clean.shape, generator=gen).to(dtype)
        return dict(x_adv=x_adv.to(device), grad=grad.to(device), x_clean=x_clean.to(device))
    return make


def _pgd_implementations(device: str):
    kwargs = dict(eps=8 / 255, step_size=2 / 255)

    def eager(inp):
        return (reference.pgd_linf_step_(inp["x_adv"], inp["grad"], inp["x_clean"], **kwargs),)

    def build() -> list[Implementation]:
        compiled = torch.compile(reference.pgd_linf_step_)
        impls = [Implementation("eager", eager, "baseline"),
                 Implementation("compiled", lambda inp: (compiled(inp["x_adv"], inp["grad"], inp["x_clean"],
                                                                  **kwargs),), "baseline")]
        for backend in _backends_for(device):
            impls.append(Implementation(backend, lambda inp, b=backend: (ops.pgd_linf_step_(
                inp["x_adv"], inp["grad"], inp["x_clean"], backend=b, **kwargs),)))
        return impls
    return build


def _x_bytes(factor: int):
    return lambda inp: factor * inp["x_adv"].numel() * inp["x_adv"].element_size()


for _mode in ("const", "detach"):
    for _n, _c in ((256, 100), (4096, 1000), (2048, 32000)):
        _register_cross_entropy(_n, _c, torch.float32, "cpu", _mode, True,
                                ">= 3x eager, >= 1.3x compiled, peak <= 1 [N, C]")
for _c in (32000, 128256):
    for _masked in (True, False):
        _register_cross_entropy(8192, _c, torch.bfloat16, "cuda", "const", _masked,
                                ">= 80% of copy bandwidth" if _c == 32000 else "")
for _log in (False, True):
    register(BenchCase(
        family="continual", op="masked_softmax", label=f"4096x1000 const -inf log={_log}", device="cpu",
        dtype=torch.float32, make_inputs=_softmax_inputs(4096, 1000, torch.float32, "cpu"),
        implementations=_softmax_implementations(_log, "cpu"), bytes_moved=_nc_bytes(5), unit_bytes=_nc_bytes(1),
        flops=lambda inp: 8 * inp["logits"].numel(), target=">= 2x eager"))
register(BenchCase(
    family="continual", op="pgd_linf_step_", label="512x3x32x32", device="cpu", dtype=torch.float32,
    make_inputs=_pgd_inputs((512, 3, 32, 32), torch.float32, "cpu"), implementations=_pgd_implementations("cpu"),
    bytes_moved=_x_bytes(4), unit_bytes=_x_bytes(1), flops=lambda inp: 8 * inp["x_adv"].numel(),
    tolerance=dict(atol=0.0, rtol=0.0), target=">= 3x eager (compiled: parity)"))
