"""AM-mixup vs mixup / Manifold Mixup / plain CE on the 8x8 digits: long-tailed training and
coarse-to-fine transfer, with balanced accuracy and alignment/uniformity over seeds.

Same as `pyfastlab demo mixup`; the protocol (mixup.md section 8) lives in pyfastlab/mixup/demo.py.
Needs scikit-learn for the digits.

Run: python examples/mixup_digits.py [--quick] [--seeds 3] [--imbalance 50] [--coarse halves|pairs]
"""
import sys

from pyfastlab.mixup.demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
