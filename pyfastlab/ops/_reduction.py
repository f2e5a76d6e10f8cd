"""The reduction codes passed to every op schema that takes `int reduction`: one definition for all
families, the same as csrc/include/pyfastlab/reduction.h (a test compares the two)."""
NONE, SUM, MEAN = 0, 1, 2
CODES = {"none": NONE, "sum": SUM, "mean": MEAN}
