"""Compiles the kd_loss Triton kernel for sm_90 with Triton's bundled ptxas (no GPU needed), for
each dtype and term combination; see compile_triton_sm90.py. Run without TRITON_INTERPRET."""
import sys

import triton.language as tl

from compile_triton_sm90 import compile_all
from pyfastlab.kernels import kd_loss as K


def variants():
    for dtype, acc, bits in (("fp32", tl.float32, "i32"), ("bf16", tl.float32, "i32"), ("fp64", tl.float64, "i64")):
        op = "fp64" if dtype == "fp64" else "fp32"
        signature = dict(s_ptr=f"*{dtype}", t_ptr=f"*{dtype}", y_ptr="*i64", loss_ptr=f"*{op}", valid_ptr="*u8",
                         g_ptr=f"*{dtype}", C="i32", ignore_index="i64", inv_t_bits=bits, soft_t2_bits=bits,
                         soft_t_bits=bits, hard_bits=bits)
        for has_target, soft, hard in ((True, True, True), (False, True, False), (True, False, True)):
            yield K._kd_fwd, signature, dict(HAS_TARGET=has_target, USE_SOFT=soft, USE_HARD=hard, WANT_GRAD=True,
                                             ACC=acc, BLOCK=1024)


def main() -> int:
    return compile_all(variants(), "kd_loss")


if __name__ == "__main__":
    sys.exit(main())
