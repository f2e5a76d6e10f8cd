"""Video relation detection with a Temporal Span Proposal Network on synthetic VidVRD-format videos.

Same as `pyfastlab demo vidvrd`. The protocol (vidvrd.md section 8) lives in pyfastlab/vidvrd/demo.py:
generate 56 videos, train the TSPN on box-geometry features, and print mAP, R@50/100 and P@1/5/10 of
the official VidVRD evaluation for TSPN, all pairs, random scores and the ground truth.

Run: python examples/vidvrd_demo.py [--quick] [--epochs 12] [--seed 0]
"""
import sys

from pyfastlab.vidvrd.demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
