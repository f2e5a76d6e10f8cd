"""AM-mixup on scikit-learn's 8x8 digits (mixup.md section 8): long-tailed training (task A) and
coarse-to-fine transfer (task B), methods none / mixup / manifold / am, balanced accuracy and the
alignment/uniformity of the test embeddings over seeds.

Task A trains on a long-tailed subset of the train pool (exponential profile, rho = --imbalance)
and evaluates on a balanced test set (50 per class). Task B trains on coarse groups ({0-4}, {5-9},
or --coarse pairs: {0,1}, {2,3}, ...) and fits a linear probe on the frozen embeddings with the fine
labels. MLP 64-128-64 + linear head, Adam 3e-3, wd 5e-4, batch 64, 800 steps (--quick: 1 seed, 200).
Small data is noisy: the verdicts are PASS or WARN, and the exit code is 0 either way.
"""
from __future__ import annotations

import argparse
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .am_mixup import AsymptoticMidpointMixup
from .long_tailed import long_tailed_indices
from .metrics import class_alignment, uniformity

METHODS = ("none", "mixup", "manifold", "am")


def load_digits():
    """(x [1797, 64] scaled by 1/16, y) or None without scikit-learn."""
    try:
        from sklearn.datasets import load_digits as sk_load
    except ImportError:
        return None
    data = sk_load()
    return torch.tensor(data.data, dtype=torch.float32) / 16, torch.tensor(data.target, dtype=torch.int64)


def split(x, y):
    """Fixed split (seed 0): 50 test images per class, the rest is the train pool; features
    standardised with the pool's statistics (std + 0.1)."""
    g = torch.Generator().manual_seed(0)
    test = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)[:50]]
                      for c in range(10)])
    pool = torch.ones(len(y), dtype=torch.bool)
    pool[test] = False
    mu, sd = x[pool].mean(0), x[pool].std(0) + 0.1
    x = (x - mu) / sd
    return (x[pool], y[pool]), (x[test], y[test])


class MLP(nn.Module):
    def __init__(self, n_out):
        super().__init__()
        self.l1, self.l2, self.head = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, n_out)

    def embed(self, x, start=0):
        """The embedding h, starting the forward at layer `start` (0 input, 1 after the first hidden)."""
        if start == 0:
            x = torch.relu(self.l1(x))
        return torch.relu(self.l2(x))


def train(method, x, y, n_classes, steps, seed):
    torch.manual_seed(seed)
    model = MLP(n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=5e-4)
    am = AsymptoticMidpointMixup(n_classes)
    beta = {"mixup": torch.distributions.Beta(1.0, 1.0), "manifold": torch.distributions.Beta(2.0, 2.0)}
    for step in range(steps):
        idx = torch.randint(0, len(y), (64,))
        xb, yb = x[idx], y[idx]
        if method == "none":
            loss = F.cross_entropy(model.head(model.embed(xb)), yb)
        elif method in ("mixup", "manifold"):
            lam = float(beta[method].sample())
            p = torch.randperm(len(yb))
            layer = 0 if method == "mixup" else int(torch.randint(0, 2, ()))
            hidden = xb if layer == 0 else torch.relu(model.l1(xb))
            z = model.head(model.embed(ops.pair_mix(hidden, p, lam), start=layer))
            # CE form of the label mix (Manifold Mixup's official script uses a BCE-type loss)
            loss = lam * F.cross_entropy(z, yb) + (1 - lam) * F.cross_entropy(z, yb[p])
        else:
            loss = am(model.embed(xb), yb, model.head, progress=step / steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def balanced_accuracy(pred, y):
    return torch.stack([(pred[y == c] == c).float().mean() for c in torch.unique(y)]).mean().item()


def probe(h_train, y_train, h_test, n_classes):
    """Multinomial logistic regression on standardised embeddings (L-BFGS, 200 iterations, L2 1e-3)."""
    mu, sd = h_train.mean(0), h_train.std(0) + 1e-6
    a, b = (h_train - mu) / sd, (h_test - mu) / sd
    lin = nn.Linear(a.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(a), y_train) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return lin(b).argmax(1)


def geometry(h, y):
    return float(class_alignment(h, y)), float(uniformity(h))


def task_a(pool, test, args, seed, method):
    idx = long_tailed_indices(pool[1], args.imbalance, n_max=124, seed=seed)
    model = train(method, pool[0][idx], pool[1][idx], 10, args.steps, seed)
    with torch.no_grad():
        h = model.embed(test[0])
        acc = balanced_accuracy(model.head(h).argmax(1), test[1])
    return (acc,) + geometry(h, test[1])


def task_b(pool, test, args, seed, method):
    group = (lambda y: y // 5) if args.coarse == "halves" else (lambda y: y // 2)
    n_groups = 2 if args.coarse == "halves" else 5
    model = train(method, pool[0], group(pool[1]), n_groups, args.steps, seed)
    with torch.no_grad():
        h_pool, h_test = model.embed(pool[0]), model.embed(test[0])
        coarse = balanced_accuracy(model.head(h_test).argmax(1), group(test[1]))
    fine = balanced_accuracy(probe(h_pool, pool[1], h_test, 10), test[1])
    return (fine,) + geometry(h_test, test[1]) + (coarse,)


def _fmt(values):
    t = torch.tensor(values)
    return f"{t.mean():.3f} ± {t.std(unbiased=False):.3f}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pyfastlab demo mixup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=800, help="training steps (default 800)")
    parser.add_argument("--imbalance", type=float, default=50, help="task A imbalance factor rho in [10, 50]")
    parser.add_argument("--coarse", choices=("halves", "pairs"), default="halves", help="task B coarse groups")
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 steps (the test suite's run)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: fastest here)")
    args = parser.parse_args(argv)
    if not 10 <= args.imbalance <= 50:
        parser.error("--imbalance must lie in [10, 50]")
    if args.quick:
        args.seeds, args.steps = 1, 200
    data = load_digits()
    if data is None:
        print("scikit-learn is not installed: the digits demo needs it (pip install 'pyfastlab[demo]')")
        return 0
    torch.set_num_threads(args.threads)
    pool, test = split(*data)
    start = time.perf_counter()
    verdicts = []
    for name, task, extra in (("A: long-tailed, rho = %g" % args.imbalance, task_a, ""),
                              ("B: coarse-to-fine (%s), linear probe on fine labels" % args.coarse, task_b,
                               "  coarse acc")):
        print(f"\nTask {name}; {args.seeds} seed(s), {args.steps} steps")
        print(f"{'method':<10} {'balanced acc':>16} {'alignment':>11} {'uniformity':>11}{extra}")
        rows = {}
        for method in METHODS:
            runs = [task(pool, test, args, seed, method) for seed in range(args.seeds)]
            cols = list(zip(*runs))
            rows[method] = [torch.tensor(c).mean().item() for c in cols]
            line = f"{method:<10} {_fmt(cols[0]):>16} {rows[method][1]:>11.3f} {rows[method][2]:>11.3f}"
            if len(cols) > 3:
                line += f"  {_fmt(cols[3])}"
            print(line)
        verdicts.append((name[0], "am beats none on balanced accuracy", rows["am"][0] > rows["none"][0]))
        verdicts.append((name[0], "am embeddings more uniform than none", rows["am"][2] < rows["none"][2]))
    print()
    for task, text, ok in verdicts:
        print(f"[{'PASS' if ok else 'WARN'}] task {task}: {text}")
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    return 0
