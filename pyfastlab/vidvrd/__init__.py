"""The vidvrd family: the VidVRD evaluation protocol, a synthetic data generator in its JSON format
and the Temporal Span Proposal Network (TSPN) on box tracks."""
from .evaluate import evaluate
from .synthetic import degrade_predictions, groundtruth_from_annotations, make_vidvrd_like, write_dataset
from .config import TSPNConfig
from .features import VideoBatch, VideoTracks, box_geometry_features, collate, tracks_from_annotation
from .inference import prediction_json
from .targets import BatchTargets, VideoTargets, collate_targets, merge_relation_spans, targets_from_annotation
from .training import make_batch, make_optimizer, prepare_videos
from .tspn import TemporalSpanProposalNetwork, TSPNOutput

__all__ = ["evaluate", "make_vidvrd_like", "write_dataset", "groundtruth_from_annotations", "degrade_predictions",
           "TemporalSpanProposalNetwork", "TSPNConfig", "TSPNOutput", "VideoTracks", "VideoBatch",
           "box_geometry_features", "collate", "tracks_from_annotation", "VideoTargets", "BatchTargets",
           "collate_targets", "merge_relation_spans", "targets_from_annotation", "prepare_videos", "make_batch",
           "make_optimizer", "prediction_json"]
