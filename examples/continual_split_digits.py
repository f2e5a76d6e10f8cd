"""Split-digits continual learning: replay methods with and without general masked softmax, and EAT.

Same as `pyfastlab demo continual`. The protocol (continual.md section 8) lives in
pyfastlab/continual/demo.py; the training step every method shares is
pyfastlab.continual.ReplayLearner. Needs scikit-learn for the digits (else a synthetic stand-in).

Run: python examples/continual_split_digits.py [--quick] [--seeds 10] [--buffer 50] [--no-eat]
"""
import sys

from pyfastlab.continual.demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
