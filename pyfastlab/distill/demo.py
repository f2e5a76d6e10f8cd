"""The digits distillation demo (distill.md section 8): `pyfastlab demo distill`.

A small CNN teacher trained on scikit-learn's 8x8 digits distils into a smaller CNN student trained
on a 25% subset: cross-entropy, KD, FSD's structure losses (intra, local, global with a k-means
memory, all three) and dumb teachers (random and matured, of the student's own architecture).
Then the teacher-student CKA map and a check of MinibatchCKA against full-batch CKA.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from rich.console import Console
from rich.table import Table

from .. import ops
from ..ops import _backends
from .dumb_teacher import make_dumb_teacher, mature
from .fsd import FSDLoss
from .kd import KDLoss, KDSchedule
from .kmeans import kmeans
from .memory import GlobalInterFeatureLoss
from .minibatch_cka import MinibatchCKA

BATCH, TEMPERATURE, ALPHA = 64, 4.0, 0.5
TEACHER_EPOCHS, TEACHER_LR = 20, 1e-3
STUDENT_EPOCHS, STUDENT_LR = 40, 3e-3
MEMORY_SLOTS, DT_LAMBDA, MATURE_EPOCHS = 16, 0.3, 2
MB_PASSES, MB_BATCH = 10, 256


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(512, 128), nn.Linear(128, 10)

    def taps(self, x: Tensor) -> dict[str, Tensor]:
        """Every representation the demo compares; "pooled" is the FSD pair's teacher side."""
        conv1 = torch.relu(self.conv1(x))
        conv2 = torch.relu(self.conv2(conv1))
        pooled = nn.functional.max_pool2d(conv2, 2)
        fc1 = torch.relu(self.fc1(pooled.flatten(1)))
        return {"conv1": conv1, "conv2": conv2, "pooled": pooled, "fc1": fc1, "logits": self.fc2(fc1)}

    def forward(self, x: Tensor) -> Tensor:
        return self.taps(x)["logits"]


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(192, 10)

    def taps(self, x: Tensor) -> dict[str, Tensor]:
        conv1 = torch.relu(self.conv1(x))
        conv2 = torch.relu(self.conv2(conv1))
        pooled = nn.functional.max_pool2d(conv2, 2)
        return {"conv1": conv1, "conv2": conv2, "pooled": pooled, "logits": self.fc(pooled.flatten(1))}

    def forward(self, x: Tensor) -> Tensor:
        return self.taps(x)["logits"]


TEACHER_MAP, STUDENT_MAP = ("conv1", "conv2", "fc1", "logits"), ("conv1", "conv2", "logits")


@dataclass(frozen=True)
class Variant:
    name: str
    teacher: str = "none"         # "none" (CE) | "trained" | "random" | "matured"
    fsd: tuple = (0.0, 0.0, 0.0)  # gamma_intra, gamma_local, gamma_global


VARIANTS = [
    Variant("CE"),
    Variant("KD", "trained"),
    Variant("KD+I", "trained", (1.0, 0.0, 0.0)),
    Variant("KD+L", "trained", (0.0, 1.0, 0.0)),
    Variant("KD+G", "trained", (0.0, 0.0, 1.0)),
    Variant("KD+FSD", "trained", (1.0, 1.0, 1.0)),
    Variant("DT-random", "random"),
    Variant("DT-matured", "matured"),
]


@dataclass
class Digits:
    x_train: Tensor   # [1437, 1, 8, 8]
    y_train: Tensor
    x_test: Tensor    # [360, 1, 8, 8]
    y_test: Tensor
    x_sub: Tensor     # the students' stratified 25% of the train split
    y_sub: Tensor
    x_all: Tensor     # all 1,797 images (the MinibatchCKA check)


def load_digits_split() -> Digits:
    """Pixels / 16; stratified 80/20 split, seed 0; the students' stratified 25% subset, seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(bunch.target).long()
    idx = torch.arange(y.shape[0]).numpy()
    train, test = train_test_split(idx, test_size=0.2, stratify=y.numpy(), random_state=0)
    sub, _ = train_test_split(train, train_size=0.25, stratify=y.numpy()[train], random_state=0)
    return Digits(x[train], y[train], x[test], y[test], x[sub], y[sub], x)


def batches(n: int, gen: torch.Generator, size: int = BATCH, drop_last: bool = False):
    order = torch.randperm(n, generator=gen)
    cut = n - n % size if drop_last else n
    return order[:cut].split(size)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).double().mean())


def train_teacher(data: Digits, epochs: int) -> Teacher:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    teacher = Teacher()
    optimiser = torch.optim.Adam(teacher.parameters(), lr=TEACHER_LR)
    for _ in range(epochs):
        teacher.train()
        for idx in batches(data.x_train.shape[0], gen):
            optimiser.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(teacher(data.x_train[idx]), data.y_train[idx]).backward()
            optimiser.step()
    return teacher.eval().requires_grad_(False)


@dataclass
class TeacherCache:
    """The trained teacher's outputs on the student subset (no augmentation: computed once) and the
    k-means memory of its flattened pooled features over the whole train split."""
    logits: Tensor
    pooled: Tensor
    memory: Tensor


def teacher_cache(teacher: Teacher, data: Digits) -> TeacherCache:
    with torch.no_grad():
        sub = teacher.taps(data.x_sub)
        train_pooled = teacher.taps(data.x_train)["pooled"].flatten(1)
    memory = kmeans(train_pooled, MEMORY_SLOTS, n_iter=3, init="k-means++", seed=0).centroids
    return TeacherCache(sub["logits"], sub["pooled"], memory)


def dumb_teacher_logits(student: Student, mode: str, data: Digits, seed: int) -> Tensor:
    """Logits of a random or matured (MATURE_EPOCHS of CE on the subset) dumb teacher on the subset."""
    train_fn = None
    if mode == "matured":
        gen = torch.Generator().manual_seed(1000 + seed)
        loader = [(data.x_sub[idx], data.y_sub[idx]) for idx in batches(data.x_sub.shape[0], gen)]
        train_fn = lambda m: mature(m, loader, steps=MATURE_EPOCHS * len(loader), lr=STUDENT_LR)  # noqa: E731
    teacher = make_dumb_teacher(student, mode, seed=1000 + seed, train_fn=train_fn)
    with torch.no_grad():
        return teacher(data.x_sub)


def train_student(variant: Variant, data: Digits, cache: TeacherCache, seed: int, epochs: int) -> Student:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    student = Student()
    if variant.teacher == "trained":
        t_logits, kd = cache.logits, KDLoss(TEMPERATURE, soft_weight=1 - ALPHA, hard_weight=ALPHA)
    elif variant.teacher in ("random", "matured"):
        t_logits = dumb_teacher_logits(student, variant.teacher, data, seed)
        kd = KDSchedule("constant", weight=DT_LAMBDA).apply(KDLoss(TEMPERATURE), 0)
    else:
        t_logits, kd = None, None
    fsd = None
    if any(variant.fsd):
        memory = None
        if variant.fsd[2]:
            memory = GlobalInterFeatureLoss(cache.memory, 192, gamma_m=0.5, distance_norm="mean")
        fsd = FSDLoss(*variant.fsd, global_loss=memory)
    params = list(student.parameters()) + (list(fsd.parameters()) if fsd is not None else [])
    optimiser = torch.optim.Adam(params, lr=STUDENT_LR)
    for _ in range(epochs):
        student.train()
        for idx in batches(data.x_sub.shape[0], gen):
            taps = student.taps(data.x_sub[idx])
            if kd is None:
                loss = nn.functional.cross_entropy(taps["logits"], data.y_sub[idx])
            else:
                loss = kd(taps["logits"], t_logits[idx], data.y_sub[idx])
            if fsd is not None:
                loss = loss + fsd(taps["pooled"], cache.pooled[idx])  # beta = 1
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return student.eval().requires_grad_(False)


def _flat(taps: dict, names) -> list[Tensor]:
    return [taps[name].flatten(1) for name in names]


def pair_cka(student: Student, teacher_pooled: Tensor, x: Tensor) -> float:
    """Debiased CKA of the FSD pair (flattened pooled maps) over x."""
    with torch.no_grad():
        pooled = student.taps(x)["pooled"].flatten(1)
    return float(ops.linear_cka(pooled, teacher_pooled, debiased=True))


@dataclass
class MinibatchCheck:
    minibatch: Tensor
    full: Tensor
    naive_biased: Tensor
    self_diagonal: Tensor
    null: dict  # the same three estimates with the student's rows permuted (true CKA ~ 0)


def _minibatch_estimates(t_layers, s_layers, gen, self_metric=None) -> tuple[Tensor, Tensor, Tensor]:
    """(MinibatchCKA debiased, full-batch debiased, naive mean of per-batch biased CKA)."""
    metric, naive = MinibatchCKA(debiased=True), []
    for _ in range(MB_PASSES):
        for idx in batches(t_layers[0].shape[0], gen, MB_BATCH, drop_last=True):
            xs, ys = [t[idx] for t in t_layers], [s[idx] for s in s_layers]
            metric.update(xs, ys)
            if self_metric is not None:
                self_metric.update(xs, xs)
            naive.append(ops.cka_matrix(xs, ys, debiased=False).double())
    full = ops.cka_matrix(t_layers, s_layers, debiased=True).double()
    return metric.compute(), full, torch.stack(naive).mean(0)


@torch.no_grad()
def minibatch_check(teacher: Teacher, student: Student, x: Tensor) -> MinibatchCheck:
    """MinibatchCKA (debiased) over MB_PASSES shuffled passes in batches of MB_BATCH (the last,
    partial batch of each pass dropped: its few rows would weigh as much as a full batch) against
    full-batch debiased CKA and the naive mean of per-batch biased CKA; teacher vs itself; and a
    null pair (student rows permuted, so the true CKA is ~0) where the biased estimator's
    small-batch inflation shows (for aligned layers it is tiny at b = 256)."""
    t_layers = _flat(teacher.taps(x), TEACHER_MAP)
    s_layers = _flat(student.taps(x), STUDENT_MAP)
    self_metric = MinibatchCKA(debiased=True)
    gen = torch.Generator().manual_seed(0)
    minibatch, full, naive = _minibatch_estimates(t_layers, s_layers, gen, self_metric)
    perm = torch.randperm(x.shape[0], generator=gen)
    null = _minibatch_estimates(t_layers, [s[perm] for s in s_layers], gen)
    return MinibatchCheck(minibatch, full, naive, self_metric.compute().diagonal(),
                          dict(zip(("minibatch", "full", "naive_biased"), null)))


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * std:.{digits}f}"


def _matrix_table(title: str, matrix: Tensor, rows, cols) -> Table:
    table = Table(title=title)
    table.add_column("teacher \\ student")
    for c in cols:
        table.add_column(c, justify="right")
    for name, row in zip(rows, matrix.tolist()):
        table.add_row(name, *(f"{v:.3f}" for v in row))
    return table


def _checks(teacher_acc, results, check: MinibatchCheck, full_protocol: bool) -> list[tuple[str, bool]]:
    mean = statistics.mean
    checks = []
    if full_protocol:
        checks.append((f"teacher accuracy {teacher_acc:.3f} >= 0.97", teacher_acc >= 0.97))
        worst = min(min(r["acc"]) for r in results.values())
        checks.append((f"every student accuracy >= 0.85 (lowest {worst:.3f})", worst >= 0.85))
        fsd, ce = mean(results["KD+FSD"]["cka"]), mean(results["CE"]["cka"])
        checks.append((f"teacher-student CKA of KD+FSD {fsd:.3f} > CE's {ce:.3f}", fsd > ce))
    diff = float((check.minibatch - check.full).abs().max())
    checks.append((f"MinibatchCKA within 0.03 of full-batch CKA on every entry (max diff {diff:.4f})", diff <= 0.03))
    null = check.null
    null_diff = float((null["minibatch"] - null["full"]).abs().max())
    null_gap = float((null["naive_biased"] - null["full"]).mean())
    checks.append((f"null pair (student rows permuted): MinibatchCKA within 0.03 of full-batch (max diff "
                   f"{null_diff:.4f}) while the naive biased mean is higher by {null_gap:.3f} on average (> 0.01)",
                   null_diff <= 0.03 and null_gap > 0.01))
    self_err = float((check.self_diagonal - 1).abs().max())
    checks.append((f"teacher-vs-teacher MinibatchCKA diagonal = 1 (max error {self_err:.1e} <= 1e-6)",
                   self_err <= 1e-6))
    return checks


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pyfastlab demo distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="student seeds 0..N-1 per variant (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 5 epochs, accuracy checks off")
    parser.add_argument("--check", action="store_true", help="exit 1 when a check fails")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the CNNs are too small to gain from more)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.threads < 1:
        parser.error("--seeds and --threads must be positive")
    console = Console()
    try:
        data = load_digits_split()
    except ImportError:
        console.print("the distill demo needs scikit-learn for the digits: pip install 'pyfastlab[demo]'")
        return 0
    torch.set_num_threads(args.threads)
    seeds = list(range(1 if args.quick else args.seeds))
    teacher_epochs, student_epochs = (5, 5) if args.quick else (TEACHER_EPOCHS, STUDENT_EPOCHS)
    start = time.perf_counter()
    console.print(f"torch {torch.__version__}, ops backend {_backends.resolve('auto', torch.device('cpu'))}, "
                  f"{torch.get_num_threads()} thread(s); digits {data.x_train.shape[0]} train / "
                  f"{data.x_test.shape[0]} test, students on {data.x_sub.shape[0]}; seeds {seeds}, "
                  f"{student_epochs} student epochs")
    teacher = train_teacher(data, teacher_epochs)
    teacher_acc = accuracy(teacher, data.x_test, data.y_test)
    console.print(f"teacher test accuracy {teacher_acc:.3f} ({teacher_epochs} epochs, "
                  f"{time.perf_counter() - start:.1f} s)")
    cache = teacher_cache(teacher, data)
    with torch.no_grad():
        teacher_test_pooled = teacher.taps(data.x_test)["pooled"].flatten(1)
    results, seed0 = {}, {}
    for variant in VARIANTS:
        began = time.perf_counter()
        accs, ckas = [], []
        for seed in seeds:
            student = train_student(variant, data, cache, seed, student_epochs)
            accs.append(accuracy(student, data.x_test, data.y_test))
            ckas.append(pair_cka(student, teacher_test_pooled, data.x_test))
            if seed == seeds[0]:
                seed0[variant.name] = student
        results[variant.name] = {"acc": accs, "cka": ckas, "seconds": time.perf_counter() - began}

    table = Table(title=f"students: test accuracy (%) and debiased teacher-student CKA of the FSD pair, "
                        f"mean ± std over {len(seeds)} seed(s)")
    for col, justify in (("variant", "left"), ("test acc %", "right"), ("CKA (pooled maps)", "right"),
                         ("wall s", "right")):
        table.add_column(col, justify=justify)
    for name, r in results.items():
        table.add_row(name, _mean_std(r["acc"]), _mean_std(r["cka"], 1.0, 3), f"{r['seconds']:.1f}")
    console.print(table)

    with torch.no_grad():
        t_test = _flat(teacher.taps(data.x_test), TEACHER_MAP)
        for name in ("CE", "KD+FSD"):
            s_test = _flat(seed0[name].taps(data.x_test), STUDENT_MAP)
            cka = ops.cka_matrix(t_test, s_test, debiased=True)
            console.print(_matrix_table(f"debiased CKA, teacher x {name} student (seed {seeds[0]}, test set)",
                                        cka, TEACHER_MAP, STUDENT_MAP))
    check = minibatch_check(teacher, seed0["KD+FSD"], data.x_all)
    console.print(_matrix_table(f"MinibatchCKA (debiased), teacher x KD+FSD student, all {data.x_all.shape[0]} "
                                f"images, {MB_PASSES} shuffled passes of batch {MB_BATCH}",
                                check.minibatch, TEACHER_MAP, STUDENT_MAP))
    console.print(_matrix_table("full-batch debiased CKA", check.full, TEACHER_MAP, STUDENT_MAP))
    console.print(_matrix_table("naive mean of per-batch biased CKA", check.naive_biased, TEACHER_MAP, STUDENT_MAP))
    gap = check.naive_biased - check.full
    console.print(f"aligned pair: naive biased mean - full-batch debiased = {float(gap.mean()):+.4f} on average, "
                  f"{float(gap.max()):+.4f} at most (small: the layers are far from independent at b = {MB_BATCH})")
    for name, value in check.null.items():
        console.print(f"null pair (student rows permuted), {name}: mean {float(value.mean()):+.4f}, "
                      f"max |.| {float(value.abs().max()):.4f}")
    console.print("teacher-vs-teacher MinibatchCKA diagonal: " + ", ".join(f"{v:.9f}" for v in check.self_diagonal))

    checks = _checks(teacher_acc, results, check, full_protocol=not args.quick)
    for text, ok in checks:
        console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/] {text}")
    if args.quick:
        console.print("(--quick: 1 seed, 5 epochs; the accuracy and CKA-ordering checks are off)")
    console.print(f"total {time.perf_counter() - start:.1f} s")
    return 1 if args.check and not all(ok for _, ok in checks) else 0
