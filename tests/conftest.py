"""Suite-wide settings. Hypothesis is derandomised: every run draws the same examples (a failure
replays exactly), and a failing example is printed with its reproduction blob."""
from hypothesis import settings

settings.register_profile("pyfastlab", derandomize=True, print_blob=True)
settings.load_profile("pyfastlab")
