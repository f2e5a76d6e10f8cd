"""Digits distillation: CE, KD, FSD structure losses (intra / local / global memory), dumb teachers,
the teacher-student CKA map and MinibatchCKA vs full-batch CKA.

Same as `pyfastlab demo distill`. The protocol (distill.md section 8) lives in
pyfastlab/distill/demo.py. Needs scikit-learn for the digits (else it says so and exits 0).

Run: python examples/distill_digits.py [--quick] [--seeds 3] [--check] [--threads 1]
"""
import sys

from pyfastlab.distill.demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
