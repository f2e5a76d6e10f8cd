"""Compiles a representative set of the Triton kernels for sm_90 with Triton's bundled ptxas:
catches what the interpreter accepts but the GPU compiler rejects, with no GPU. Run in a process
without TRITON_INTERPRET (under the interpreter, @triton.jit functions cannot be compiled).
Prints one line per failure and exits non-zero if any."""
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pyfastlab.kernels import continual as K

TARGET = GPUTarget("cuda", 90, 32)


def compile_variant(fn, signature, constexprs, num_warps=8):
    full = {**signature, **{name: "constexpr" for name in constexprs}}
    source = ASTSource(fn, {name: full[name] for name in fn.arg_names}, constexprs)
    triton.compile(source, target=TARGET, options={"num_warps": num_warps})


def variants():
    for dtype, acc, bits in (("fp32", tl.float32, "i32"), ("bf16", tl.float32, "i32"), ("fp64", tl.float64, "i64")):
        op = "fp64" if dtype == "fp64" else "fp32"
        ce = dict(z_ptr=f"*{dtype}", z_stride="i64", y_ptr="*i64", valid_ptr="*u8", grp_ptr="*i64", act_ptr="*u8",
                  w_ptr=f"*{op}", coef_ptr=f"*{op}", loss_ptr=f"*{op}", out_ptr=f"*{op}", counted_ptr="*u8",
                  g_ptr=f"*{dtype}", N="i32", C="i32", G="i32", m_bits=bits, d_bits=bits, so_bits=bits, sn_bits=bits)
        for gmode, detach in ((0, False), (1, True)):
            flags = dict(GMODE=gmode, DETACH=detach, HAS_WEIGHT=detach, IS_MEAN=True, WANT_GRAD=True, ACC=acc)
            yield K._ce_fwd_fused, ce, dict(flags, ROWS=4, BLOCK=256)
            yield K._ce_fwd_looped, ce, dict(flags, BLOCK=1024)
        sm = dict(z_ptr=f"*{dtype}", z_stride="i64", grp_ptr="*i64", act_ptr="*u8", o_ptr=f"*{dtype}", N="i32",
                  C="i32", G="i32", m_bits=bits, d_bits=bits)
        smb = dict(gb_ptr=f"*{dtype}", y_ptr=f"*{dtype}", grp_ptr="*i64", act_ptr="*u8", dz_ptr=f"*{dtype}", N="i32",
                   C="i32", G="i32", so_bits=bits, sn_bits=bits)
        for log in (False, True):
            flags = dict(GMODE=1, DETACH=log, LOG=log, ACC=acc)
            yield K._softmax_fwd_fused, sm, dict(flags, ROWS=4, BLOCK=256)
            yield K._softmax_bwd_fused, smb, dict(flags, ROWS=4, BLOCK=256)
            yield K._softmax_fwd_looped, sm, dict(flags, BLOCK=1024)
            yield K._softmax_bwd_looped, smb, dict(flags, BLOCK=1024)
        yield (K._ce_bwd_scale, dict(g_ptr=f"*{dtype}", counted_ptr="*u8", s_ptr=f"*{op}", N="i32", C="i32"),
               dict(PER_ROW=True, ACC=acc, ROWS=4, BLOCK=256))
        yield (K._pgd_step, dict(x_ptr=f"*{dtype}", g_ptr=f"*{dtype}", x0_ptr=f"*{dtype}", n="i64", a_bits=bits,
                                 e_bits=bits, lo_bits=bits, hi_bits=bits), dict(ACC=acc, BLOCK=1024))


def compile_all(variants, label: str, **options) -> int:
    """Compiles every (kernel, signature, constexprs) variant, reporting each failure, not just
    the first; returns the exit code."""
    failures = count = 0
    for fn, signature, constexprs in variants:
        count += 1
        try:
            compile_variant(fn, signature, constexprs, **options)
        except Exception as exc:
            failures += 1
            print(f"FAILED {fn.__name__} {signature} {constexprs}: {type(exc).__name__}: {str(exc)[:800]}")
    print(f"compiled {count - failures} of {count} {label} Triton kernel variants for sm_90")
    return 1 if failures else 0


def main() -> int:
    return compile_all(variants(), "continual")


if __name__ == "__main__":
    sys.exit(main())
