"""Compiles the vidvrd Triton kernels (pairwise_mlp_scores, temporal_iou, span_nms) for sm_90 with
Triton's bundled ptxas (no GPU needed), for each dtype; see compile_triton_sm90.py. Run without
TRITON_INTERPRET."""
import sys

from compile_triton_sm90 import compile_all
from pyfastlab.kernels import vidvrd_ops as K


def variants():
    for dt in ("fp32", "fp64"):
        fwd = dict(a_ptr=f"*{dt}", b_ptr=f"*{dt}", w_ptr=f"*{dt}", bias_ptr=f"*{dt}", s_ptr=f"*{dt}", N="i32", M="i32",
                   H="i32")
        yield K._pairwise_fwd, fwd, dict(BN=K._BN, BM=K._BM, BH=K._BH)
        bwd = dict(x_ptr=f"*{dt}", y_ptr=f"*{dt}", g_ptr=f"*{dt}", w_ptr=f"*{dt}", dx_ptr=f"*{dt}", r_ptr=f"*{dt}",
                   rows_per_batch="i64", K="i32", H="i32", g_row_stride="i64", g_k_stride="i64", g_batch_stride="i64")
        for want_dx, want_r in ((True, True), (True, False), (False, True)):
            yield K._pairwise_bwd, bwd, dict(WANT_DX=want_dx, WANT_R=want_r, BJ=K._BJ, BH=K._BH)
        nms = dict(sb_ptr=f"*{dt}", se_ptr=f"*{dt}", is_start_ptr="*u1", end_ptr="*i64", thr_ptr=f"*{dt}",
                   kb_ptr=f"*{dt}", ke_ptr=f"*{dt}", keep_ptr="*i8", max_keep="i64")
        yield K._nms_group, nms, dict(BLOCK=64)
    for span, out in (("fp32", "fp32"), ("fp64", "fp64"), ("i64", "fp32"), ("fp32", "fp16")):
        tiou = dict(a_ptr=f"*{span}", b_ptr=f"*{span}", out_ptr=f"*{out}", P="i32", Q="i32")
        yield K._tiou, tiou, dict(BP=K._TILE, BQ=K._TILE)


def main() -> int:
    return compile_all(variants(), "vidvrd", num_warps=4)


if __name__ == "__main__":
    sys.exit(main())
