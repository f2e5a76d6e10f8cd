"""Compiles the mixup Triton kernels (pair_mix, mixed CE, uniformity) for sm_90 with Triton's bundled
ptxas (no GPU needed), for each dtype; see compile_triton_sm90.py. Run without TRITON_INTERPRET."""
import sys

import triton.language as tl

from compile_triton_sm90 import compile_all
from pyfastlab.kernels import mixup as K


def variants():
    for dt, acc, tacc, bits in (("fp32", "fp32", tl.float32, "i32"), ("bf16", "fp32", tl.float32, "i32"),
                                ("fp64", "fp64", tl.float64, "i64")):
        yield K._pair_mix_fwd, dict(x_ptr=f"*{dt}", p_ptr="*i64", lam_ptr=f"*{acc}", out_ptr=f"*{dt}", B="i32",
                                    D="i32"), dict(BLOCK=K._BLOCK)
        for want in (True, False):
            yield K._pair_mix_bwd, dict(g_ptr=f"*{dt}", x_ptr=f"*{dt}", p_ptr="*i64", lam_ptr=f"*{acc}",
                                        off_ptr="*i64", rows_ptr="*i64", gx_ptr=f"*{dt}", glam_ptr=f"*{acc}",
                                        D="i32"), dict(WANT_LAM=want, BLOCK=K._BLOCK)
            yield K._mce_bwd, dict(z_ptr=f"*{dt}", p_ptr="*i64", lam_ptr=f"*{acc}", y_ptr="*i64", lse_ptr=f"*{acc}",
                                   w_ptr=f"*{acc}", off_ptr="*i64", rows_ptr="*i64", gz_ptr=f"*{dt}",
                                   glam_ptr=f"*{acc}", C="i32"), dict(WANT_LAM=want, BLOCK=K._BLOCK)
        yield K._mce_fwd, dict(z_ptr=f"*{dt}", p_ptr="*i64", lam_ptr=f"*{acc}", y_ptr="*i64", loss_ptr=f"*{acc}",
                               lse_ptr=f"*{acc}", B="i32", C="i32"), dict(BLOCK=K._BLOCK)
        ieee = dt == "fp32"
        yield K._uniformity_fwd, dict(x_ptr=f"*{dt}", n_ptr=f"*{acc}", t_bits=bits, max_ptr=f"*{acc}",
                                      sum_ptr=f"*{acc}", N="i32", D="i32", NB="i32"), \
            dict(ACC=tacc, IEEE=ieee, BM=K._TILE, BD=256 if dt == "bf16" else 128)
        yield K._uniformity_bwd, dict(x_ptr=f"*{dt}", n_ptr=f"*{acc}", t_bits=bits, lse_ptr=f"*{acc}",
                                      g_ptr=f"*{acc}", out_ptr=f"*{acc}", N="i32", D="i32"), \
            dict(ACC=tacc, IEEE=ieee, BM=K._TILE, BD=256 if dt == "bf16" else 128)


def main() -> int:
    return compile_all(variants(), "mixup", num_warps=4)


if __name__ == "__main__":
    sys.exit(main())
