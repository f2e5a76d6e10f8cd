"""masked_cross_entropy on rows longer than a warp's share (C > 1024), where the CUDA kernel
switches to 16-byte packs held in registers (up to 32768 bf16 columns) or streamed (beyond):
every dtype, the edges of each size range, each mask form, both modes, the three reductions and
the special rows, against the CPU kernel in float64 and against the same input fed through the
scalar kernel (logits 2 bytes off 16-byte alignment)."""
import pytest
import torch

from helpers import assert_close, generator, kernel_backends, task_mask
from pyfastlab import ops

BACKENDS = [p for p in kernel_backends() if p.values[1].type == "cuda"] or [
    pytest.param("cuda", "cuda", marks=pytest.mark.skip(reason="needs a CUDA device"))]
MODES = [("const", dict(mask_value=float("-inf"))), ("const", dict(mask_value=0.5)),
         ("detach", dict(offset=-0.5, old_grad_scale=0.3))]


def sizes(dtype):
    vec = 16 // torch.empty(0, dtype=dtype).element_size()
    edges = {1032, 2048, 4096 + vec, 8192, 8192 + vec, 16384, 16384 + vec, 32000, 32768, 32768 + vec, 40000, 128256}
    return sorted(edges | {1025})  # 1025: not a multiple of the pack, the scalar kernel


def misaligned(z):
    buf = torch.empty(z.numel() + 8, dtype=z.dtype, device=z.device)
    out = buf[1:1 + z.numel()].view_as(z)
    out.copy_(z)
    return out


def case(n_classes, dtype, mask_kind):
    n_rows = 6 if n_classes < 100000 else 3
    gen = generator(n_classes + len(mask_kind))
    z = (torch.randn(n_rows, n_classes, generator=gen) * 3).to(dtype)
    y = torch.randint(0, n_classes, (n_rows,), generator=gen)
    if mask_kind == "block":  # the benchmark's mask: group 9 keeps the last C/10 classes
        active = torch.zeros(10, n_classes, dtype=torch.bool)
        active[9, n_classes // 10 * 9:] = True
        groups = torch.tensor([9, -1, 9, 9, -1, 9][:n_rows])
        y[groups == 9] = n_classes - 1 - y[groups == 9] % (n_classes // 10)
    else:
        active, groups = task_mask(n_rows, n_classes, gen, mask_kind)
    if n_rows > 2:
        y[1] = -100
    z[0, 5] = float("nan")              # a NaN row, or nothing where that entry is const-masked
    z[n_rows - 1, 9] = float("inf")     # a +inf maximum: a NaN row
    if n_rows > 4:
        z[4] = float("-inf")
        z[4, 7] = 0.0                   # one finite entry
    weight = torch.rand(n_rows, generator=gen) + 0.5
    return z, y, active, groups, weight.to(torch.float64 if dtype == torch.float64 else torch.float32)


def loss_and_grad(z, *args, upstream, backend, **kwargs):
    z = z.detach().clone().requires_grad_(True)
    loss = ops.masked_cross_entropy(z, *args[:3], weight=args[3], backend=backend, **kwargs)
    loss.backward(upstream if upstream is not None else torch.ones_like(loss))
    return loss.detach(), z.grad


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mask_kind", ["none", "C", "NC", "GC", "block"])
def test_long_rows_match_the_cpu_kernel(backend, device, dtype, mask_kind):
    def on(t, where):
        return None if t is None else t.to(where)

    for n_classes in sizes(dtype):
        z, y, active, groups, weight = case(n_classes, dtype, mask_kind)
        z64 = z.double()
        for mode, extra in MODES:
            for reduction in ("mean", "sum", "none"):
                upstream = torch.linspace(-1, 2, z.shape[0]) if reduction == "none" else None
                kwargs = dict(mode=mode, reduction=reduction, new_grad_scale=0.8, **extra)
                expected = loss_and_grad(z64, y, active, groups, weight.double(), backend="cpu",
                                         upstream=on(upstream, torch.float64), **kwargs)
                gpu_args = [on(t, device) for t in (y, active, groups, weight)]
                gpu_upstream = on(on(upstream, dtype), device)
                what = f"C={n_classes} {mode} {extra} {reduction}"
                for label, logits in (("packed", z.to(device)), ("scalar", misaligned(z.to(device)))):
                    got = loss_and_grad(logits, *gpu_args, backend=backend, upstream=gpu_upstream, **kwargs)
                    assert_close(got[0].cpu(), expected[0], dtype, f"{what} {label} loss")
                    assert_close(got[1].cpu(), expected[1], dtype, f"{what} {label} grad")
