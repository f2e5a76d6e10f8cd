"""Disentanglement metrics (vae.md 4.4): FactorVAE score, beta-VAE score, MIG, SAP, DCI and
CFASL's m-FVM_k, with disentanglement_lib ("dlib"), official-repo ("reference") and small
("demo") protocol presets in PROTOCOLS. Vote metrics sample through a data interface
(factor_sizes, sample_factors, images) and an encode function; MIG, SAP and DCI take
(codes, classes) arrays, e.g. from sample_codes. Every result records protocol, code and sizes."""
from ._protocol import PROTOCOLS, FactorsAsObservations, MetricResult, sample_codes
from .beta_vae import beta_vae_score
from .dci import dci, dci_from_importance
from .factor_vae import factor_vae_score
from .mfvm import multi_factor_vote_score
from .mig import mutual_information_gap
from .sap import sap_score
from .tree import fit_tree

__all__ = ["PROTOCOLS", "MetricResult", "FactorsAsObservations", "sample_codes", "factor_vae_score",
           "beta_vae_score", "mutual_information_gap", "sap_score", "dci", "dci_from_importance",
           "multi_factor_vote_score", "fit_tree"]
