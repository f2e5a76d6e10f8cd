"""Regressions of the reliability review: one error contract (ValueError naming the argument), device
kernels that never read an out-of-range index, one reduction enum, torch.compile(dynamic=True),
exact in-place overlap tests, CE precision at large logits, thread-count determinism."""
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import generator, kernel_backends
from pyfastlab import ops
from pyfastlab.ops import _reduction

BACKENDS = kernel_backends()
ALL = BACKENDS + [pytest.param("reference", torch.device("cpu"), id="reference")]
REPO = Path(__file__).resolve().parents[2]


# ---- 1. device kernels never read an out-of-range index -------------------------------------------

_RAW_TRITON_SCRIPT = textwrap.dedent("""
    import math, torch, pyfastlab
    ops = torch.ops.pyfastlab
    z = torch.randn(4, 5, dtype=torch.float64)
    ok_p, ok_y = torch.tensor([1, 0, 3, 2]), torch.tensor([0, 4, 2, 1])
    for bad in (5, -1, -100, 2**31, 2**32 + 1, -2**63):
        y = ok_y.clone(); y[1] = bad
        loss, lse = ops.mixed_logits_cross_entropy_triton(z, ok_p, None, 0.3, y, 0)
        assert loss[1].isnan() and lse[1].isnan(), (bad, loss)
        assert loss[[0, 2, 3]].isfinite().all(), (bad, loss)
        p = ok_p.clone(); p[2] = bad
        loss, lse = ops.mixed_logits_cross_entropy_triton(z, p, None, 0.3, ok_y, 0)
        assert loss[2].isnan() and loss[[0, 1, 3]].isfinite().all(), (bad, loss)
        g, _ = ops.mixed_logits_cross_entropy_backward_triton(torch.ones(4, dtype=z.dtype), z, p, None, 0.3,
                                                               ok_y, lse, 0, False)
        assert g[2].isnan().all() and g[[0, 1]].isfinite().all(), (bad, g)
        out = ops.pair_mix_triton(z, p, None, 0.3)
        assert out[2].isnan().all() and out[[0, 1, 3]].isfinite().all(), (bad, out)
        lam = torch.full((4,), 0.3, dtype=z.dtype)
        gx, glam = ops.pair_mix_backward_triton(torch.ones_like(z), z, p, lam, 0.0, True)
        assert glam[2].isnan() and glam[[0, 1, 3]].isfinite().all() and gx.isfinite().all(), (bad, glam)
        loss, *_ = ops.kd_loss_forward_triton(z, z.flip(0), y, 2.0, 1.0, 0.5, -7, 0, True)
        assert loss[1].isnan() and loss[[0, 2, 3]].isfinite().all(), (bad, loss)
    print("no out-of-range read")
""")


@pytest.mark.triton
def test_triton_kernels_never_read_an_out_of_range_index():
    """target = 2**31 crashed the mixed CE kernel; 5, -1, -100 read stray memory. Each bad index now
    gives its row NaN and leaves the other rows exact. In a subprocess: a crash must fail the test,
    not the run."""
    if "triton" not in [p.values[0] for p in BACKENDS]:
        pytest.skip("Triton cannot run here (no GPU and TRITON_INTERPRET is not 1)")
    result = subprocess.run([sys.executable, "-c", _RAW_TRITON_SCRIPT], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no out-of-range read" in result.stdout


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("bad", [5, -1, -100, 2**31, 2**32 + 1, -2**63])
def test_out_of_range_indices_raise_value_error(backend, device, bad):
    gen = generator(3)
    z = torch.randn(4, 5, generator=gen).to(device)
    p = torch.tensor([1, 0, 3, 2], device=device)
    y = torch.tensor([0, 4, 2, 1], device=device)
    y_bad, p_bad = y.clone(), p.clone()
    y_bad[1], p_bad[2] = bad, bad
    with pytest.raises(ValueError, match="target"):
        ops.mixed_logits_cross_entropy(z, p, 0.3, y_bad, backend=backend)
    with pytest.raises(ValueError, match="partner"):
        ops.mixed_logits_cross_entropy(z, p_bad, 0.3, y, backend=backend)
    with pytest.raises(ValueError, match="partner"):
        ops.pair_mix(z, p_bad, 0.3, backend=backend)
    if bad != -100:  # the default ignore_index
        with pytest.raises(ValueError, match="target"):
            ops.kd_loss(z, z.flip(0), y_bad, hard_weight=1.0, backend=backend)
        with pytest.raises(ValueError, match="target"):
            ops.masked_cross_entropy(z, y_bad, backend=backend)
    groups = torch.tensor([0, 1, -1, 0], device=device)
    groups[3] = bad if bad != -1 else -2
    with pytest.raises(ValueError, match="row_group"):
        ops.masked_softmax(z, torch.ones(2, 5, dtype=torch.bool, device=device), groups, backend=backend)


# ---- 4. one error contract ------------------------------------------------------------------------

def _samples():
    z = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 4, 2, 1])
    a = torch.randn(3, 3, 3, dtype=torch.float64)
    return {
        "expm a not a tensor": (lambda: ops.expm([[1.0]]), "a"),
        "expm a integer": (lambda: ops.expm(torch.ones(2, 2, dtype=torch.int64)), "a"),
        "symmetric_expm w integer": (lambda: ops.symmetric_expm(torch.ones(2, 2, dtype=torch.int32)), "w"),
        "ipe_transform w dtype": (lambda: ops.ipe_transform(torch.randn(2, 3), a), "w"),
        "composite_symmetry weights": (lambda: ops.composite_symmetry(a, "w", a[0], a[0]), "weights"),
        "masked CE ignore_index 1.5": (lambda: ops.masked_cross_entropy(z, y, ignore_index=1.5), "ignore_index"),
        "masked CE ignore_index None": (lambda: ops.masked_cross_entropy(z, y, ignore_index=None), "ignore_index"),
        "masked CE mask_value str": (lambda: ops.masked_cross_entropy(z, y, mask_value="x"), "mask_value"),
        "masked CE offset None": (lambda: ops.masked_cross_entropy(z, y, mode="detach", offset=None), "offset"),
        "masked CE reduction list": (lambda: ops.masked_cross_entropy(z, y, reduction=["mean"]), "reduction"),
        "masked softmax log str": (lambda: ops.masked_softmax(z, log="yes"), "log"),
        "kd ignore_index 1.5": (lambda: ops.kd_loss(z, z, y, ignore_index=1.5), "ignore_index"),
        "kd temperature None": (lambda: ops.kd_loss(z, z, temperature=None), "temperature"),
        "kd temperature str": (lambda: ops.kd_loss(z, z, temperature="4"), "temperature"),
        "kd hard_weight nan": (lambda: ops.kd_loss(z, z, y, hard_weight=math.nan), "hard_weight"),
        "uniformity t None": (lambda: ops.uniformity_loss(z, t=None), "t"),
        "pgd eps str": (lambda: ops.pgd_linf_step_(z.clone(), z, z.clone(), eps="1", step_size=0.1), "eps"),
        "pgd lo None": (lambda: ops.pgd_linf_step_(z.clone(), z, z.clone(), eps=1, step_size=0.1, lo=None), "lo"),
        "span_nms max_keep 1.5": (lambda: ops.span_nms(torch.tensor([[0., 2.]]), torch.ones(1), 0.5, max_keep=1.5),
                                  "max_keep"),
        "span_nms threshold None": (lambda: ops.span_nms(torch.tensor([[0., 2.]]), torch.ones(1), None),
                                    "iou_threshold"),
        "pairwise bias str": (lambda: ops.pairwise_mlp_scores(a, a, a[0, 0], "0"), "bias"),
        "viou pixel_inclusive int": (lambda: ops.trajectory_viou(torch.zeros(1, 2, 4), torch.tensor([[0, 2]]),
                                                                 torch.zeros(1, 2, 4), torch.tensor([[0, 2]]),
                                                                 pixel_inclusive=1), "pixel_inclusive"),
        "linear_cka debiased str": (lambda: ops.linear_cka(z, z, debiased="no"), "debiased"),
        "cka_matrix n = 0": (lambda: ops.cka_matrix([torch.zeros(0, 3)], [torch.zeros(0, 2)]), "xs"),
    }


@pytest.mark.parametrize("case", list(_samples()))
def test_bad_arguments_raise_value_error_naming_them(case):
    call, name = _samples()[case]
    with pytest.raises(ValueError) as info:
        call()
    assert name in str(info.value), str(info.value)


# ---- 5. one reduction enum ------------------------------------------------------------------------

def test_reduction_codes_are_one_definition_in_cpp_and_python():
    header = (REPO / "csrc/include/pyfastlab/reduction.h").read_text()
    codes = dict(re.findall(r"k(None|Sum|Mean) = (\d)", header))
    assert {name.lower(): int(code) for name, code in codes.items()} == _reduction.CODES
    assert not re.search(r"\bkBatchMean\b|constexpr int64_t kNone", "".join(
        p.read_text() for p in (REPO / "csrc").rglob("*") if p.suffix in (".h", ".cpp", ".cu", ".cuh")))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_reduction_codes_mean_the_same_in_every_family(backend, device):
    """The same code gives the sum (1) and the mean (2) in the continual, kd and mixup schemas."""
    suffix = "_triton" if backend == "triton" else ""
    z = torch.randn(6, 5, dtype=torch.float64, generator=generator(4)).to(device)
    y = torch.tensor([0, 4, 2, 1, 3, 3], device=device)
    rows = F.cross_entropy(z, y, reduction="none")
    p = torch.arange(6, device=device)
    for code, want in ((_reduction.SUM, rows.sum()), (_reduction.MEAN, rows.mean())):
        mce = getattr(torch.ops.pyfastlab, "mixed_logits_cross_entropy" + suffix)(z, p, None, 1.0, y, code)[0]
        kd = getattr(torch.ops.pyfastlab, "kd_loss_forward" + suffix)(z, z, y, 1.0, 0.0, 1.0, -100, code, False)[0]
        masked = getattr(torch.ops.pyfastlab, "masked_cross_entropy" + suffix)(
            z, y, None, None, None, 0, -math.inf, 0.0, 0.0, 1.0, -100, code, False)[0]
        for got in (mce, kd, masked):
            torch.testing.assert_close(got, want)


# ---- 3. torch.compile(fullgraph=True, dynamic=True) ----------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["masked_cross_entropy", "masked_softmax", "uniformity_loss", "pgd_linf_step_"])
def test_compiles_with_dynamic_shapes(name):
    torch._dynamo.reset()
    gen = generator(5)
    z = torch.randn(6, 5, generator=gen)
    y = torch.tensor([0, 4, 2, 1, 3, 3])
    mask = torch.rand(5, generator=gen) > 0.3
    calls = {
        "masked_cross_entropy": lambda z: ops.masked_cross_entropy(z, y, mode="detach", offset=-1.0,
                                                                   old_grad_scale=0.5, ignore_index=3),
        "masked_softmax": lambda z: ops.masked_softmax(z, mask, mask_value=-5.0),
        "uniformity_loss": lambda z: ops.uniformity_loss(z, t=1.5),
        "pgd_linf_step_": lambda z: ops.pgd_linf_step_(z.clone(), torch.ones_like(z), z, eps=0.1, step_size=0.05),
    }
    call = calls[name]
    compiled = torch.compile(call, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(z), call(z))


@pytest.mark.slow
def test_pgd_overlap_check_holds_under_compile():
    torch._dynamo.reset()
    step = torch.compile(lambda x, g, x0: ops.pgd_linf_step_(x, g, x0, eps=0.1, step_size=0.05), fullgraph=True,
                         dynamic=True)
    x = torch.rand(8, 3)
    with pytest.raises(Exception, match="x_adv must not share memory with grad"):
        step(x, x, x.clone())


# ---- 7. pgd_linf_step_: a real overlap test --------------------------------------------------------

@pytest.mark.parametrize("backend,device", ALL)
def test_pgd_overlap_is_exact(backend, device):
    step = lambda x, g, x0: ops.pgd_linf_step_(x, g, x0, eps=0.1, step_size=0.05, backend=backend)
    buffer = torch.rand(3, 8, 4, device=device)
    step(buffer[0], buffer[1], buffer[2])  # disjoint parts of one buffer: fine
    interleaved = torch.rand(8, 6, device=device)
    step(interleaved[:, 0::3], interleaved[:, 1::3], interleaved[:, 2::3])  # interleaved columns: fine
    with pytest.raises(ValueError, match="share memory"):
        step(torch.rand(1, 4, device=device).expand(3, 4), torch.rand(3, 4, device=device),
             torch.rand(3, 4, device=device))  # x_adv overlaps itself
    with pytest.raises(ValueError, match="share memory with grad"):
        step(buffer[0, 2:], buffer[0, :6], buffer[2, :6])  # x_adv and grad share rows 2..5
    with pytest.raises(ValueError, match="share memory with x_clean"):
        step(interleaved[:, 0:4:2], interleaved[:, 1:5:2], interleaved[:, 2:4])  # column 2 is in both


# ---- 8. cross-entropy at large logits ------------------------------------------------------------

@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("scale", [1e8, -1e8, 3e30])
def test_cross_entropy_of_equal_large_logits_is_log_c(backend, device, scale):
    """lse - z_y in fp32 gave 0.0 for equal logits at 1e8 (F.cross_entropy: log C)."""
    z = torch.full((3, 7), scale, device=device)
    y = torch.tensor([0, 3, 6], device=device)
    want = torch.tensor(math.log(7))
    torch.testing.assert_close(F.cross_entropy(z, y), want)
    torch.testing.assert_close(ops.masked_cross_entropy(z, y, backend=backend).cpu(), want)
    torch.testing.assert_close(ops.mixed_logits_cross_entropy(z, torch.tensor([1, 2, 0], device=device), 0.25, y,
                                                              backend=backend).cpu(), want)
    torch.testing.assert_close(ops.kd_loss(z, z, y, soft_weight=0.0, hard_weight=1.0, backend=backend).cpu(),
                               want)


@pytest.mark.parametrize("backend,device", ALL)
def test_uniformity_of_a_huge_row_is_finite(backend, device):
    x = torch.randn(5, 3, generator=generator(6))
    x[2] = 1e20
    got = ops.uniformity_loss(x.to(device), backend=backend)
    want = ops.uniformity_loss(x.double(), backend="reference")
    assert torch.isfinite(want)
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_cka_of_a_huge_constant_side_is_nan(backend, device, dtype):
    x = torch.full((6, 3), 1e30, dtype=dtype, device=device)
    y = torch.randn(6, 4, generator=generator(7)).to(dtype=dtype, device=device)
    assert ops.linear_cka(x, y, backend=backend).isnan()
    assert ops.cka_matrix([x], [y], backend=backend).isnan().all()


# ---- 2. thread-count determinism ------------------------------------------------------------------

def test_composite_symmetry_is_bit_identical_for_any_thread_count():
    gen = generator(8)
    codebook = torch.randn(24, 10, 10, generator=gen, dtype=torch.float64) * 0.3
    weights = torch.randn(70, 24, generator=gen, dtype=torch.float64)
    z1, z2 = torch.randn(70, 10, generator=gen, dtype=torch.float64), torch.randn(70, 10, generator=gen,
                                                                                   dtype=torch.float64)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3, 4, 7):
            torch.set_num_threads(count)
            inputs = [t.clone().requires_grad_(True) for t in (codebook, weights, z1, z2)]
            y1, y2 = ops.composite_symmetry(*inputs, backend="cpu")
            (y1.sum() + (y2 * y2).sum()).backward()
            results.append([y1, y2] + [t.grad for t in inputs])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
