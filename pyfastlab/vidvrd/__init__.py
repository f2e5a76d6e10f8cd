"""The vidvrd family: the VidVRD evaluation protocol and a synthetic data generator in its JSON format."""
from .evaluate import evaluate
from .synthetic import degrade_predictions, groundtruth_from_annotations, make_vidvrd_like, write_dataset

__all__ = ["evaluate", "make_vidvrd_like", "write_dataset", "groundtruth_from_annotations", "degrade_predictions"]
