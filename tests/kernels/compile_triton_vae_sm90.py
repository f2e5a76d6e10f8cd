"""Compiles the vae Triton kernels (expm, symmetric_expm, ipe_transform, composite_symmetry) for
sm_90 with Triton's bundled ptxas (no GPU needed), for each dtype and padded size; see
compile_triton_sm90.py. Run without TRITON_INTERPRET."""
import sys

import triton.language as tl
from compile_triton_sm90 import compile_all
from pyfastlab.kernels import vae_ops as K


def variants():
    for dt, acc in (("fp32", tl.float32), ("fp64", tl.float64)):
        tables = dict(theta_ptr=f"*{dt}", deg_ptr="*i32", blk_ptr="*i32", coef_ptr=f"*{dt}", n="i32")
        for NP in (16, 64):
            flags = dict(NP=NP, ACC=acc)
            yield K._expm_fwd, dict(a_ptr=f"*{dt}", out_ptr=f"*{dt}", scratch_ptr=f"*{dt}", **tables), flags
            yield K._expm_bwd, dict(g_ptr=f"*{dt}", a_ptr=f"*{dt}", out_ptr=f"*{dt}", scratch_ptr=f"*{dt}",
                                    **tables), flags
            yield K._reconstruct, dict(q_ptr=f"*{dt}", lam_ptr=f"*{dt}", out_ptr=f"*{dt}", n="i32"), flags
            yield K._dk_backward, dict(g_ptr=f"*{dt}", q_ptr=f"*{dt}", lam_ptr=f"*{dt}", diag_ptr=f"*{dt}",
                                       out_ptr=f"*{dt}", n="i32"), dict(flags, HAS_DIAG=True)
            yield K._chain, dict(x_ptr=f"*{dt}", w_ptr=f"*{dt}", e_ptr=f"*{dt}", logdet_ptr=f"*{dt}", K="i32",
                                 n="i32"), flags
            yield K._chain_adjoint, dict(x_ptr=f"*{dt}", ebar_ptr=f"*{dt}", xbar_ptr=f"*{dt}", suffix_ptr=f"*{dt}",
                                         K="i32", n="i32"), flags
            vec = {name: f"*{dt}" for name in ("a_ptr", "z1_ptr", "z2_ptr")}
            yield K._composite_fwd, dict(vec, y1_ptr=f"*{dt}", y2_ptr=f"*{dt}", scratch_ptr=f"*{dt}", **tables), flags
            yield K._composite_bwd, dict(vec, g1_ptr=f"*{dt}", g2_ptr=f"*{dt}", gz1_ptr=f"*{dt}", gz2_ptr=f"*{dt}",
                                         ga_ptr=f"*{dt}", scratch_ptr=f"*{dt}", **tables), dict(flags, NEED_A=True)


def main() -> int:
    return compile_all(variants(), "vae", num_warps=4)


if __name__ == "__main__":
    sys.exit(main())
