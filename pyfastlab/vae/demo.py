"""The procedural-dSprites VAE demo (vae.md 8): `pyfastlab demo vae`.

Trains each variant of VARIANTS on the 5760-image demo grid of DSprites (32x32, rendered in
memory, no download) with identical steps and data order per seed, then scores the encoder means
with the FactorVAE score, MIG and DCI after the metrics pass a sanity block of known answers
(factors themselves as codes score at the top, independent noise at chance).

Variants are entries of VARIANTS: a name, what it is, the pyfastlab ops it uses and a factory
(model, dataset size) -> objective, an nn.Module whose forward(model, x, generator) returns
VAELossTerms and whose own parameters (if any) are trained with the model (param_groups(lr), when
defined, sets their learning rates). Entries: the baselines beta-VAE and beta-TCVAE, MIPE-beta-VAE,
CFASL-beta-VAE, and the opt-in (--variants) MIPE- and CFASL-beta-TCVAE.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from rich.console import Console
from rich.table import Table

from .backbones import VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, reparameterize
from .cfasl import CFASL
from .data import DSprites
from .losses import BetaVAELoss, VAELossTerms, gaussian_kl, reconstruction_loss
from .metrics import FactorsAsObservations, dci, factor_vae_score, mutual_information_gap, sample_codes
from .mipe import MIPE
from .tcvae import BetaTCVAELoss

LATENT_DIM, BATCH, LR, CLIP = 10, 64, 1e-3, 1.0


class ELBOObjective(nn.Module):
    """Encode, sample z, decode, and apply a beta-VAE or beta-TCVAE loss (no own parameters)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, model: VAE, x: Tensor, generator: torch.Generator) -> VAELossTerms:
        logits, mu, logvar, z = model(x, generator)
        if isinstance(self.loss, BetaTCVAELoss):
            return self.loss(logits, x, mu, logvar, z)
        return self.loss(logits, x, mu, logvar)


class MIPEObjective(nn.Module):
    """MIPE on the sampled z: IPE units, EF conversion, decoded unit average (vae.md 4.2)."""

    def __init__(self, mipe: MIPE, tcvae: Optional[BetaTCVAELoss] = None):
        super().__init__()
        self.mipe, self.tcvae = mipe, tcvae

    def forward(self, model: VAE, x: Tensor, generator: torch.Generator) -> VAELossTerms:
        mu, logvar = model.encoder(x)
        z = reparameterize(mu, logvar, generator)
        return self.mipe(model.decoder, x, mu, logvar, z, tcvae=self.tcvae)

    def reconstruction(self, model: VAE, x: Tensor, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """R of what MIPE reconstructs: the average over units of the decoded z_hat."""
        eps = (z - mu) * torch.exp(-0.5 * logvar)
        x_hat = self.mipe.decode(model.decoder, self.mipe.ipe(z, eps)[0])
        return F.binary_cross_entropy(x_hat, x, reduction="sum") / x.shape[0]


class CFASLObjective(nn.Module):
    """CFASL around a beta-VAE / beta-TCVAE loss (vae.md 4.3); the attention trains at a scaled lr."""

    def __init__(self, cfasl: CFASL, base: nn.Module):
        super().__init__()
        self.cfasl, self.base = cfasl, base

    def param_groups(self, lr: float) -> list[dict]:
        return self.cfasl.param_groups(lr)

    def forward(self, model: VAE, x: Tensor, generator: torch.Generator) -> VAELossTerms:
        mu, logvar = model.encoder(x)
        z = reparameterize(mu, logvar, generator)
        return self.cfasl(model.decoder, x, mu, logvar, z, self.base, generator)


def _demo_cfasl() -> CFASL:
    # section_size 4 (K = 40) and init_std 0.1 fit the budget and keep the first steps finite (vae.md 8)
    return CFASL(LATENT_DIM, section_size=4, init_std=0.1, epsilon=0.1, threshold=0.2)


@dataclass(frozen=True)
class Variant:
    label: str
    about: str
    build: Callable[[VAE, int], nn.Module]     # (model, dataset_size) -> objective
    ops: tuple = ()                             # pyfastlab ops it runs (reported with their backend)


VARIANTS: dict[str, Variant] = {
    "beta-vae": Variant("β-VAE", "beta = 4", lambda model, n: ELBOObjective(BetaVAELoss(beta=4.0))),
    "beta-tcvae": Variant("β-TCVAE", "beta = 6, MSS estimator",
                          lambda model, n: ELBOObjective(BetaTCVAELoss(n, beta=6.0, estimator="mss"))),
    "mipe-beta-vae": Variant("MIPE-β-VAE", "U = 3, K = 2, beta = 1 (as coded)",
                             lambda model, n: MIPEObjective(MIPE(LATENT_DIM)), ops=("ipe_transform",)),
    "cfasl-beta-vae": Variant("CFASL-β-VAE", "beta = 4, section_size = 4 (K = 40), init_std 0.1, eps 0.1, th 0.2",
                              lambda model, n: CFASLObjective(_demo_cfasl(), BetaVAELoss(beta=4.0)),
                              ops=("expm", "composite_symmetry")),
    "mipe-beta-tcvae": Variant("MIPE-β-TCVAE", "U = 3, K = 2, TC beta = 6, MSS",
                               lambda model, n: MIPEObjective(MIPE(LATENT_DIM), BetaTCVAELoss(n, beta=6.0)),
                               ops=("ipe_transform",)),
    "cfasl-beta-tcvae": Variant("CFASL-β-TCVAE", "TC beta = 6, MSS, section_size = 4",
                                lambda model, n: CFASLObjective(_demo_cfasl(), BetaTCVAELoss(n, beta=6.0)),
                                ops=("expm", "composite_symmetry")),
}


# the default run (the spec's three variants plus beta-TCVAE); the beta-TCVAE forms of MIPE and
# CFASL are opt-in through --variants to keep the default under ~2 minutes on 2 cores
DEFAULT_VARIANTS = ("beta-vae", "beta-tcvae", "mipe-beta-vae", "cfasl-beta-vae")


@dataclass
class RunResult:
    steps: int = 0
    ms_per_step: float = math.nan
    recon: float = math.nan
    kl: float = math.nan
    scores: dict = field(default_factory=dict)
    finite: bool = True
    stopped_early: bool = False


def build_model(backbone: str) -> VAE:
    if backbone == "conv":
        return VAE(ConvEncoder(LATENT_DIM), ConvDecoder(LATENT_DIM))
    return VAE(MLPEncoder(LATENT_DIM, image_size=32), MLPDecoder(LATENT_DIM, image_size=32))


@torch.no_grad()
def dataset_losses(model: VAE, images: Tensor, seed: int, objective: Optional[nn.Module] = None) -> tuple[float, float]:
    """Mean reconstruction R and KL_g over the whole dataset (z sampled, as in training). An
    objective that reconstructs differently (MIPE: the average over its units) says so through
    reconstruction(model, x, mu, logvar, z)."""
    gen = torch.Generator().manual_seed(seed)
    own = getattr(objective, "reconstruction", None)
    recon = kl = 0.0
    for x in images.split(1024):
        logits, mu, logvar, z = model(x, gen)
        r = own(model, x, mu, logvar, z) if own is not None else reconstruction_loss(logits, x)
        recon += float(r) * x.shape[0]
        kl += float(gaussian_kl(mu, logvar).sum())
    return recon / images.shape[0], kl / images.shape[0]


def score(model: VAE, data: DSprites, dci_model: str, seed: int) -> dict:
    """FVM, MIG, DCI of the encoder means with the "demo" protocol sizes (vae.md 8)."""
    model.eval()
    encode = lambda x: model.encoder(x)[0]
    with torch.no_grad():
        fvm = factor_vae_score(data, encode, protocol="demo", seed=seed)
        codes, classes = sample_codes(data, encode, 4000, seed=seed + 1)
        mig = mutual_information_gap(codes, classes, protocol="demo")
        dci_codes, dci_classes = sample_codes(data, encode, 3000, seed=seed + 2)
        d = dci(dci_codes, dci_classes, model=dci_model, protocol="demo", seed=seed)
    return {"FVM": fvm.score, "MIG": mig.score, "D": d["disentanglement"], "C": d["completeness"],
            "I": d["informativeness"]}


def train(variant: Variant, data: DSprites, images: Tensor, seed: int, steps: int, backbone: str, dci_model: str,
          deadline: float) -> RunResult:
    torch.manual_seed(seed)
    model = build_model(backbone)
    objective = variant.build(model, images.shape[0])
    params = list(model.parameters()) + list(objective.parameters())
    # objectives with their own learning-rate groups (CFASL's slower attention) declare them
    groups = objective.param_groups(LR) if hasattr(objective, "param_groups") else [
        {"params": list(objective.parameters()), "lr": LR}]
    optimizer = torch.optim.Adam([{"params": list(model.parameters()), "lr": LR}] + groups, lr=LR)
    gen = torch.Generator().manual_seed(seed)          # same data order and noise for every variant
    result = RunResult()
    order = torch.empty(0, dtype=torch.long)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        if time.perf_counter() > deadline:
            result.stopped_early = True
            break
        if order.numel() < BATCH:
            order = torch.randperm(images.shape[0], generator=gen)
        batch, order = order[:BATCH], order[BATCH:]
        terms = objective(model, images[batch], gen)
        if not torch.isfinite(terms.loss):
            result.finite = False
            break
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        result.steps = step + 1
    result.ms_per_step = 1000 * (time.perf_counter() - start) / max(result.steps, 1)
    model.eval()
    result.recon, result.kl = dataset_losses(model, images, seed, objective.eval())
    result.scores = score(model, data, dci_model, seed)
    return result


def sanity(data: DSprites, dci_model: str) -> list[tuple[str, bool]]:
    """Known answers on the demo grid (vae.md 5): factors as codes (dims 5-9 constant) and N(0, I) codes."""
    view = FactorsAsObservations(data)
    identity = lambda c: torch.cat([c, torch.zeros_like(c)], dim=1)
    noise_gen = torch.Generator().manual_seed(12345)
    noise = lambda c: torch.randn(c.shape[0], 10, generator=noise_gen, dtype=torch.float64)
    checks = []
    for name, encode in (("identity", identity), ("random", noise)):
        fvm = factor_vae_score(view, encode, protocol="demo", num_eval=1000).score
        codes, classes = sample_codes(view, encode, 4000)
        mig = mutual_information_gap(codes, classes, protocol="demo").score
        d = dci(codes, classes, model=dci_model, protocol="demo")
        dis, com = d["disentanglement"], d["completeness"]
        if name == "identity":
            checks.append((f"identity latents: FVM {fvm:.3f} = 1, MIG {mig:.4f} >= 0.99, D {dis:.4f} / C {com:.4f} "
                           ">= 0.999", fvm == 1.0 and mig >= 0.99 and dis >= 0.999 and com >= 0.999))
        else:
            chance = 1 / len(data.factor_sizes)
            checks.append((f"random latents: FVM {fvm:.3f} ~ {chance:.1f} (+-0.05), MIG {mig:.4f} <= 0.02, "
                           f"D {dis:.3f} / C {com:.3f} <= 0.05",
                           abs(fvm - chance) <= 0.05 and mig <= 0.02 and dis <= 0.05 and com <= 0.05))
    return checks


def _fmt(values: list, digits: int = 3) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _table(rows: dict[str, list[RunResult]], seeds: int) -> Table:
    table = Table(title=f"procedural dSprites (demo grid, 5760 images), codes = encoder means, mean ± std over "
                        f"{seeds} seed(s)")
    for col in ("variant", "steps", "ms/step", "recon", "KL", "FVM", "MIG", "DCI D", "DCI C", "DCI I"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, runs in rows.items():
        table.add_row(name, "/".join(sorted({str(r.steps) for r in runs})), _fmt([r.ms_per_step for r in runs], 1),
                      _fmt([r.recon for r in runs], 1), _fmt([r.kl for r in runs], 1),
                      *(_fmt([r.scores[k] for r in runs]) for k in ("FVM", "MIG", "D", "C", "I")))
    return table


def _header(console: Console, variants: list[str], args) -> None:
    import pyfastlab

    console.print(f"pyfastlab {pyfastlab.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
                  f"backbone {args.backbone}, DCI model {args.dci}")
    ops = sorted({op for v in variants for op in VARIANTS[v].ops})
    if ops:
        backends = pyfastlab.info()["backends"]
        console.print("ops: " + ", ".join(f"{op} ({', '.join(backends.get(op, ['unavailable']))})" for op in ops))
    else:
        console.print("ops: none (the selected variants are plain PyTorch)")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pyfastlab demo vae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: {','.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per run (default 1500)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds 0..N-1 (default 1 to stay within ~2 minutes; 2 or more print mean ± std)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these small steps gain nothing from more on 2 cores)")
    parser.add_argument("--backbone", choices=("mlp", "conv"), default="mlp",
                        help="mlp on 32x32 (default) or the 64x64 conv pair of vae.md 4.1 (outside the time budget)")
    parser.add_argument("--dci", choices=("tree", "gbt"), default="tree", help="DCI importance model (default tree)")
    parser.add_argument("--max-seconds", type=float, default=170.0,
                        help="stop training when this much time has passed, and say so (default 170)")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {unknown or variants}: choose from {', '.join(VARIANTS)}")
    if args.steps < 1 or args.seeds < 1 or args.threads < 1:
        parser.error("--steps, --seeds and --threads must be positive")
    torch.set_num_threads(args.threads)
    console = Console(width=None if Console().is_terminal else 150)   # the table stays readable in logs
    start = time.perf_counter()
    deadline = start + args.max_seconds
    _header(console, variants, args)
    console.print("variants: " + "; ".join(f"{VARIANTS[v].label} ({VARIANTS[v].about})" for v in variants))
    data = DSprites(size=64 if args.backbone == "conv" else 32, grid="demo")
    images = data.images(data.classes(torch.arange(len(data))))
    console.print(f"data: {len(data)} images {data.size}x{data.size}, factor sizes {data.factor_sizes}, "
                  f"rendered in {time.perf_counter() - start:.1f} s")

    checks = sanity(data, args.dci)
    for text, ok in checks:
        console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/] sanity, {text}")

    rows: dict[str, list[RunResult]] = {}
    torch.manual_seed(0)
    untrained = build_model(args.backbone)
    base = RunResult(steps=0)
    base.recon, base.kl = dataset_losses(untrained, images, 0)
    base.scores = score(untrained, data, args.dci, 0)
    rows["untrained encoder"] = [base]
    stopped = False
    for name in variants:
        variant = VARIANTS[name]
        runs = []
        for seed in range(args.seeds):
            if runs and time.perf_counter() > deadline:
                stopped = True
                break
            run = train(variant, data, images, seed, args.steps, args.backbone, args.dci, deadline)
            stopped |= run.stopped_early
            runs.append(run)
            if not run.finite:
                console.print(f"[red]{variant.label} seed {seed}: the loss turned non-finite at step {run.steps + 1}[/]")
        rows[variant.label] = runs
    console.print(_table(rows, args.seeds))

    trained = {k: v for k, v in rows.items() if k != "untrained encoder"}
    for name, runs in trained.items():
        mig = statistics.mean(r.scores["MIG"] for r in runs)
        dis = statistics.mean(r.scores["D"] for r in runs)
        recon = statistics.mean(r.recon for r in runs)
        ok = mig > base.scores["MIG"] and dis > base.scores["D"] and recon * 5 <= base.recon
        console.print(f"[{'green' if ok else 'yellow'}]{'PASS' if ok else 'MISS'}[/] {name}: MIG {mig:.3f} > "
                      f"untrained {base.scores['MIG']:.3f}, D {dis:.3f} > {base.scores['D']:.3f}, "
                      f"reconstruction {recon:.1f} <= {base.recon:.1f} / 5")
    if stopped:
        console.print(f"[yellow]stopped early: --max-seconds {args.max_seconds:g} reached (rows show the steps done)[/]")
    console.print(f"total {time.perf_counter() - start:.1f} s")
    finite = all(r.finite for runs in trained.values() for r in runs)
    return 0 if finite and all(ok for _, ok in checks) else 1
