"""VAE disentanglement (vae.md 4): backbones, beta-VAE / beta-TCVAE losses, disentanglement
metrics (`pyfastlab.vae.metrics`) and procedural dSprites-compatible data (`pyfastlab.vae.data`)."""
from . import metrics
from .backbones import VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, reparameterize
from .data import DEMO_GRID, DSprites
from .losses import BetaVAELoss, VAELossTerms, gaussian_kl, reconstruction_loss
from .render import FACTOR_NAMES, FULL_SIZES, render
from .tcvae import BetaTCVAELoss, mss_log_weights, total_correlation_terms

__all__ = ["ConvEncoder", "ConvDecoder", "MLPEncoder", "MLPDecoder", "VAE", "reparameterize", "BetaVAELoss",
           "BetaTCVAELoss", "VAELossTerms", "reconstruction_loss", "gaussian_kl", "total_correlation_terms",
           "mss_log_weights", "DSprites", "DEMO_GRID", "FACTOR_NAMES", "FULL_SIZES", "render", "metrics"]
from .mipe import EFConversion, IPETransform, MIPE, MIPELossTerms

__all__ += ["IPETransform", "EFConversion", "MIPE", "MIPELossTerms"]
from .cfasl import CFASL, CFASLLossTerms, CompositeAttention, SymmetryCodebook

__all__ += ["SymmetryCodebook", "CompositeAttention", "CFASL", "CFASLLossTerms"]
