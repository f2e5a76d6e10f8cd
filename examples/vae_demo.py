"""beta-VAE, beta-TCVAE, MIPE-beta-VAE and CFASL-beta-VAE on procedural dSprites, scored with
FactorVAE, MIG and DCI after the metrics pass known-answer sanity checks.

Same as `pyfastlab demo vae`. The protocol (vae.md section 8) lives in pyfastlab/vae/demo.py;
variants are entries of its VARIANTS table.

Run: python examples/vae_demo.py [--seeds 2] [--steps 1500] [--variants beta-vae,mipe-beta-vae,cfasl-beta-tcvae]
"""
import sys

from pyfastlab.vae.demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
