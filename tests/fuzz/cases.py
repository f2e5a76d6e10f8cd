"""Adversarial cases for the 17 public ops of pyfastlab.ops (the reliability fuzz test).

Each op has a valid base sample (tiny shapes, drawn from a seeded generator) and a table of named
mutations. A case is (op, mutation, backend) with the id "op/mutation/backend"; building it gives
the keyword arguments of one call and what must happen:

  "error"    a ValueError whose message names one of the arguments that were broken
  "match"    the result of the reference backend on float64 copies of the inputs (NaN where it is
             NaN), or a ValueError (a valid but unusual input may be refused clearly: outcome
             "refused", listed but not a failure)
  "valid"    like "match", but a ValueError is a failure too (base samples, documented variants)
  "runs"     returns or raises a ValueError; the values are not compared (ill-conditioned inputs,
             e.g. lam = 1e30: lam x + (1 - lam) x[p] cancels catastrophically in any order)
  "meta"     every tensor on the meta device: meta outputs of the reference's shapes, or a ValueError
  "compile"  torch.compile(fullgraph=True, dynamic=True) of the call gives the eager result
  "backward" gradients w.r.t. the differentiable inputs (contiguous, gapped, transposed or
             stride-0) match the float64 reference's

The mutations: per tensor argument wrong dtypes, a list, a str, None, rank +-1, five layouts
(non-contiguous with NaN / 2**40 in the gaps, transposed, stride-0, flipped, overlapping rows),
NaN/inf/-inf/1e30 entries and, for index arguments, the values -1, n, 2**31, 2**32+1, -2**63 (also
with PYFASTLAB_CHECK=0 on Triton/CUDA); per scalar None, a str, NaN/inf, bools, 1.5 for ints,
2**63; sizes that disagree; documented edge cases (empty batches, degenerate inputs); float16 and
bfloat16; an unknown backend; meta tensors; torch.compile.

In every case the inputs must come back unchanged (except pgd_linf_step_'s x_adv), and nothing
but ValueError may escape. `run_case(case_id)` runs one case and returns its result as a dict
{"id", "outcome", "detail", "call"}; worker.py runs them in a subprocess, test_fuzz.py in a pool.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import zlib
from typing import Callable

import torch

from pyfastlab import ops

SEED = int(os.environ.get("PYFASTLAB_FUZZ_SEED", "20261206"))
NAN, INF = float("nan"), float("inf")
INDEX_EXTREMES = {"-1": -1, "n": None, "2**31": 2**31, "2**32+1": 2**32 + 1, "-2**63": -2**63}
VALUE_EXTREMES = {"nan": NAN, "inf": INF, "-inf": -INF, "1e30": 1e30}
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

# outcomes; FAILURES are what test_fuzz.py fails on
FAILURES = ("crash", "hang", "wrong_error", "unnamed_error", "no_error", "rejected_valid", "mismatch",
            "mutated_input", "compile_failed", "harness_error")


# ---- the table -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Mutation:
    name: str
    apply: Callable  # (sample: dict, gen) -> None, edits the sample in place
    expect: str      # "error" | "match" | "valid" | "runs" | "meta" | "compile" | "backward"
    names: tuple = ()  # the argument names a clear message may use ("error"; refusals of "match")
    backends: tuple | None = None  # None: every backend of backends()
    env: dict | None = None          # environment variables set while the case runs


@dataclasses.dataclass
class TensorArg:
    """One tensor argument and the generic mutations it gets. path is ("name",) or ("xs", i)."""
    path: tuple
    kind: str                        # "float" | "index" | "bool" | "span" (float or int values)
    bad_dtypes: tuple = ()
    none: str | None = "error"       # expectation of passing None (None: not tried)
    rank_up: str | None = "error"    # of x.unsqueeze(0)
    rank_down: str | None = "error"  # of x[0]
    peers: tuple = ()                # other names a message about this argument's shape may use
    bound: Callable | None = None    # index args: sample -> n, valid values in [low, n)
    low: int = 0
    layouts: dict = dataclasses.field(default_factory=dict)  # layout -> expectation override
    values: str | dict = "match"     # expectation of NaN/inf/1e30 entries (float kinds), or per value name

    @property
    def label(self):
        return self.path[0] if len(self.path) == 1 else f"{self.path[0]}[{self.path[1]}]"


@dataclasses.dataclass
class Op:
    name: str
    base: Callable                   # gen -> sample dict (keyword arguments of the op)
    tensors: list
    scalars: list = dataclasses.field(default_factory=list)   # (name, value, expectation)
    sizes: list = dataclasses.field(default_factory=list)     # (path, dim, names): shrinking dim must raise
    extra: list = dataclasses.field(default_factory=list)     # Mutation
    grads: tuple = ()                # the differentiable tensor arguments (backward cases)
    in_place: str | None = None      # the one argument the op may write
    upcast_reference: bool = True    # False: the reference runs on same-dtype copies (index outputs)
    data_dependent_shape: bool = False


def _get(sample, path):
    return sample[path[0]] if len(path) == 1 else sample[path[0]][path[1]]


def _put(sample, path, value):
    if len(path) == 1:
        sample[path[0]] = value
    else:
        members = list(sample[path[0]])
        members[path[1]] = value
        sample[path[0]] = members


def _edit(path, fn):
    """A mutation body: replace the tensor at `path` by fn(tensor, gen)."""
    return lambda s, g: _put(s, path, fn(_get(s, path), g))


def _set(**values):
    def apply(s, g):
        s.update(values)
    return apply


def _all_floats(dtype):
    """Every floating tensor of the sample (members of lists too) to dtype."""
    def conv(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.to(dtype)
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    def apply(s, g):
        for k in s:
            s[k] = conv(s[k])
    return apply


# ---- layouts: same values (except "expanded"), unusual strides -----------------------------------

def _gap_fill(t):
    if t.dtype == torch.bool:
        return True
    if t.is_floating_point():
        return NAN
    return min(2**40 + 7, torch.iinfo(t.dtype).max)


def noncontig(t, g):
    """Every other element of a wider buffer along the last dim; the gaps hold NaN / 2**40+7, so a
    kernel that ignores the strides reads them."""
    if t.dim() == 0:
        return t
    buf = torch.full((*t.shape[:-1], 2 * t.shape[-1]), _gap_fill(t), dtype=t.dtype)
    buf[..., ::2] = t
    return buf[..., ::2]


def transposed(t, g):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def expanded(t, g):
    """Stride 0 along dim 0: every row is row 0."""
    return t[:1].expand(t.shape)


def flipped(t, g):
    return t.flip(0)


def overlapping(t, g):
    """Rows that share memory: dim 0's stride is half a row, on a buffer of t's own values."""
    c = t.contiguous()
    strides = list(c.stride())
    strides[0] = max(1, strides[0] // 2)
    needed = sum((n - 1) * st for n, st in zip(c.shape, strides)) + 1
    return c.reshape(-1)[:needed].clone().as_strided(c.shape, strides)


LAYOUTS = {"noncontig": noncontig, "transposed": transposed, "expanded": expanded, "flipped": flipped,
           "overlap": overlapping}


def _to_dtype(t, dtype):
    if dtype == torch.bool:
        return t != 0
    return t.to(dtype)


def _inject(path, value, as_int=False, dtype=torch.float64):
    """One random entry of the tensor at path := value. Every float tensor goes to `dtype` first
    (float64: the reference and the kernel then compute in the same precision); as_int: the
    tensor goes to int64 first."""
    def apply(s, g):
        if not as_int:
            _all_floats(dtype)(s, g)
        t = _get(s, path)
        t = (t.to(torch.int64) if as_int else t).clone()
        if t.numel():
            t.view(-1)[int(torch.randint(t.numel(), (), generator=g))] = value
        _put(s, path, t)
    return apply


def tensor_mutations(op: Op, arg: TensorArg) -> list:
    lab, p, names = arg.label, arg.path, (arg.path[0],) + arg.peers
    out = [Mutation(f"{lab}:dtype={str(d).replace('torch.', '')}", _edit(p, lambda t, g, d=d: _to_dtype(t, d)),
                    "error", (arg.path[0],)) for d in arg.bad_dtypes]
    out.append(Mutation(f"{lab}:list", _edit(p, lambda t, g: t.tolist()), "error", (arg.path[0],)))
    out.append(Mutation(f"{lab}:str", _edit(p, lambda t, g: "abc"), "error", (arg.path[0],)))
    if arg.none is not None:
        out.append(Mutation(f"{lab}:None", _edit(p, lambda t, g: None), arg.none, names))
    if arg.rank_up is not None:
        out.append(Mutation(f"{lab}:rank+1", _edit(p, lambda t, g: t.unsqueeze(0)), arg.rank_up, names))
    if arg.rank_down is not None:
        out.append(Mutation(f"{lab}:rank-1", _edit(p, lambda t, g: t[0]), arg.rank_down, names))
    for layout, fn in LAYOUTS.items():
        if layout in ("transposed", "overlap") and len(op.base_shapes[lab]) < 2:
            continue
        expect = arg.layouts.get(layout, "match")
        out.append(Mutation(f"{lab}:{layout}", _edit(p, fn), expect, names))
    if arg.kind in ("float", "span"):
        expect = (lambda vname: arg.values.get(vname, "match")) if isinstance(arg.values, dict) else \
            (lambda vname: arg.values)
        for vname, v in VALUE_EXTREMES.items():
            out.append(Mutation(f"{lab}:{vname}", _inject(p, v), expect(vname), (arg.path[0],)))
        for vname in ("nan", "inf"):  # the float32 code paths too
            out.append(Mutation(f"{lab}:{vname}@float32", _inject(p, VALUE_EXTREMES[vname], dtype=torch.float32),
                                expect(vname), (arg.path[0],)))
    if arg.kind == "index" or arg.kind == "span":
        for vname, v in INDEX_EXTREMES.items():
            def apply(s, g, v=v):
                value = v if v is not None else arg.bound(s) if arg.bound else _get(s, p).shape[0]
                _inject(p, value, as_int=True)(s, g)
            if arg.bound is None:  # labels or clamped spans: any int64 is valid
                expect = "match"
            else:
                expect = "match" if vname == "-1" and arg.low <= -1 else "error"
            out.append(Mutation(f"{lab}:value={vname}", apply, expect, names))
            if expect == "error" and vname in ("n", "2**31", "-2**63"):
                # without PYFASTLAB_CHECK the Triton/CUDA kernels must still never read out of
                # bounds: no crash, a result or a ValueError (values undefined)
                out.append(Mutation(f"{lab}:value={vname},CHECK=0", apply, "runs", names,
                                    backends=tuple(b for b in backends() if b in ("triton", "cuda")),
                                    env={"PYFASTLAB_CHECK": "0"}))
    return out


def scalar_mutations(name, values):
    return [Mutation(f"{name}={v!r}" if not isinstance(v, str) else f"{name}='{v}'", _set(**{name: v}), expect,
                     (name,)) for v, expect in values]


def size_mutations(sizes):
    out = []
    for path, dim, names in sizes:
        label = path[0] if len(path) == 1 else f"{path[0]}[{path[1]}]"
        out.append(Mutation(f"{label}:shrink-dim{dim}", _edit(path, lambda t, g, d=dim: t.narrow(d, 0, t.shape[d] - 1)),
                            "error", names))
    return out


# scalar tables: (value, expectation)
def finite_float(extra=()):
    return [(None, "error"), ("abc", "error"), (NAN, "error"), (INF, "error"), (-INF, "error"), (1e30, "match"),
            (True, "match")] + list(extra)


INT_SCALAR = [(None, "error"), ("abc", "error"), (1.5, "error"), (2**63, "error"), (-2**63, "match"),
              (True, "match")]
CHOICE = [("bogus", "error"), (None, "error"), (3, "error")]
FLAG = [(None, "error"), ("yes", "error"), (1, "match")]


# ---- samples -------------------------------------------------------------------------------------

def randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def randint(g, lo, hi, *shape):
    return torch.randint(lo, hi, shape, generator=g)


def _continual_sample(g, ce):
    n, c, groups = 5, 7, 3
    s = dict(logits=randn(g, n, c, scale=2.0))
    if ce:
        s["target"] = randint(g, 0, c, n)
        s["target"][2] = c - 1  # one fewer class makes this target out of range
    active = torch.rand(groups, c, generator=g) > 0.3
    active[:, 0] = True
    row_group = randint(g, -1, groups, n)
    row_group[1] = groups - 1  # fewer groups makes this row out of range
    s.update(active=active, row_group=row_group, mode="const", mask_value=-INF, offset=0.0, old_grad_scale=0.0,
             new_grad_scale=1.0)
    if ce:
        s.update(weight=torch.rand(n, generator=g) + 0.5, ignore_index=-100, reduction="mean")
    return s


BAD_FLOAT = (torch.int64, torch.bool, torch.complex64)
BAD_INDEX64 = (torch.int32, torch.float32, torch.bool)
BAD_INDEX = (torch.float32, torch.bool, torch.uint8)
BAD_BOOL = (torch.uint8, torch.int64, torch.float32)


def _continual_args(ce):
    rows = ("logits", "target", "active", "row_group", "weight")
    args = [TensorArg(("logits",), "float", BAD_FLOAT, peers=rows)]
    if ce:
        args.append(TensorArg(("target",), "index", BAD_INDEX64, bound=lambda s: s["logits"].shape[1]))
    args += [
        TensorArg(("active",), "bool", BAD_BOOL, none="error", peers=("row_group",)),
        TensorArg(("row_group",), "index", BAD_INDEX, none="error", low=-1, bound=lambda s: s["active"].shape[0],
                  peers=("active",)),
    ]
    if ce:
        args.append(TensorArg(("weight",), "float", BAD_FLOAT, none="valid"))
    return args


def _continual_scalars(ce):
    out = (scalar_mutations("mode", CHOICE)
           + scalar_mutations("mask_value", finite_float()[:4] + [(-INF, "valid"), (1e30, "match"), (True, "match")])
           + scalar_mutations("offset", finite_float())
           + scalar_mutations("old_grad_scale", finite_float())
           + scalar_mutations("new_grad_scale", finite_float()))
    if ce:
        out += scalar_mutations("ignore_index", INT_SCALAR) + scalar_mutations("reduction", CHOICE)
    return out


def _continual_extra(ce):
    detach = _set(mode="detach", offset=-0.5, old_grad_scale=0.25, new_grad_scale=0.5)
    out = [Mutation("mode=detach", detach, "valid"),
           Mutation("active=[C]", lambda s, g: s.update(active=s["active"][0], row_group=s["row_group"].clamp(max=0)),
                    "valid"),
           Mutation("active=[N,C]", lambda s, g: s.update(active=s["active"][s["row_group"].clamp(min=0)],
                                                           row_group=None), "valid"),
           Mutation("active=None", _set(active=None, row_group=None), "valid"),
           Mutation("active=None,row_group", _set(active=None), "error", ("row_group", "active")),
           Mutation("row_group:int32", _edit(("row_group",), lambda t, g: t.int()), "valid"),
           Mutation("empty", lambda s, g: s.update({k: s[k][:0] for k in ("logits", "target", "row_group", "weight")
                                                   if k in s}), "valid"),
           Mutation("logits:all-masked-row", lambda s, g: s["active"].__setitem__(slice(None), False), "valid")]
    if ce:
        out += [Mutation("target:ignore_index", lambda s, g: s["target"].__setitem__(0, -100), "valid"),
                Mutation("reduction=none", _set(reduction="none"), "valid"),
                Mutation("reduction=sum", _set(reduction="sum"), "valid"),
                Mutation("weight=None", _set(weight=None), "valid")]
    else:
        out.append(Mutation("log=True", _set(log=True), "valid"))
    return out


def _pgd_sample(g):
    x_clean = torch.rand(2, 3, 4, generator=g)
    return dict(x_adv=x_clean + 0.01 * randn(g, 2, 3, 4), grad=randn(g, 2, 3, 4), x_clean=x_clean, eps=0.03,
                step_size=0.01, lo=0.0, hi=1.0)


def _kd_sample(g):
    target = randint(g, 0, 5, 2, 3)
    target[0, 1] = 4  # one fewer class makes this target out of range
    return dict(student_logits=randn(g, 2, 3, 5, scale=2.0), teacher_logits=randn(g, 2, 3, 5, scale=2.0),
                target=target, temperature=2.0, soft_weight=1.0, hard_weight=0.5, ignore_index=-100,
                reduction="batchmean")


def _spans(g, n, length=10.0):
    begin = torch.rand(n, generator=g) * length
    return torch.stack([begin, begin + 0.5 + torch.rand(n, generator=g) * length / 2], 1)


def _boxes(g, n, frames):
    xy = torch.rand(n, frames, 2, generator=g) * 20
    wh = 1 + torch.rand(n, frames, 2, generator=g) * 10
    return torch.cat([xy, xy + wh], -1)


def _frame_spans(g, n, frames):
    a, b = randint(g, 0, frames + 1, n), randint(g, 0, frames + 1, n)
    return torch.stack([torch.minimum(a, b), torch.maximum(a, b)], 1)


def _cka_features(g, *shape):
    """Small integers as floats: rows that are all equal (a degenerate side) centre to exactly 0 in
    every dtype, so "NaN for a zero-variance side" is well defined on the expanded layouts too."""
    return randint(g, -4, 5, *shape).float()


def _vae_w(g, *shape):
    return randn(g, *shape, scale=0.3)


def _float(path, **kw):
    return TensorArg(path, "float", BAD_FLOAT, **kw)


def build_ops() -> dict:
    ops_ = [
        Op("masked_cross_entropy", lambda g: _continual_sample(g, True), _continual_args(True),
           _continual_scalars(True), grads=("logits",),
           sizes=[(("logits",), 0, ("target", "logits")), (("logits",), 1, ("active", "logits", "target")),
                  (("target",), 0, ("target",)), (("active",), 0, ("active", "row_group")),
                  (("active",), 1, ("active",)), (("row_group",), 0, ("row_group",)), (("weight",), 0, ("weight",))],
           extra=_continual_extra(True)),
        Op("masked_softmax", lambda g: _continual_sample(g, False), _continual_args(False),
           _continual_scalars(False) + scalar_mutations("log", FLAG), grads=("logits",),
           sizes=[(("logits",), 0, ("row_group", "logits")), (("logits",), 1, ("active", "logits")),
                  (("active",), 0, ("active", "row_group")), (("active",), 1, ("active",)),
                  (("row_group",), 0, ("row_group",))],
           extra=_continual_extra(False)),
        Op("pgd_linf_step_", _pgd_sample,
           [_float(("x_adv",), peers=("grad", "x_clean"), rank_up="error",
                   layouts={"expanded": "error", "overlap": "error"}),
            _float(("grad",), peers=("x_adv",)), _float(("x_clean",), peers=("x_adv",))],
           scalar_mutations("eps", finite_float([(-0.1, "error"), (0.0, "valid")]))
           + scalar_mutations("step_size", finite_float([(-0.01, "valid")]))
           + scalar_mutations("lo", [(None, "error"), ("abc", "error"), (NAN, "error"), (2.0, "error"),
                                     (-INF, "valid")])
           + scalar_mutations("hi", [(None, "error"), ("abc", "error"), (NAN, "error"), (-1.0, "error"),
                                     (INF, "valid")]),
           sizes=[(("grad",), 2, ("grad", "x_adv")), (("x_clean",), 0, ("x_clean", "x_adv"))],
           extra=[Mutation("grad=x_adv", lambda s, g: s.update(grad=s["x_adv"]), "error", ("x_adv", "grad")),
                  Mutation("x_clean=x_adv", lambda s, g: s.update(x_clean=s["x_adv"]), "error", ("x_adv", "x_clean")),
                  Mutation("x_clean=grad", lambda s, g: s.update(x_clean=s["grad"]), "valid"),
                  Mutation("x_adv,grad:one-buffer", _one_buffer(0), "match"),
                  Mutation("x_adv,grad:overlap", _one_buffer(1), "error", ("x_adv", "grad")),
                  Mutation("x_adv:requires_grad", _edit(("x_adv",), lambda t, g: t.requires_grad_(True)), "error",
                           ("x_adv",)),
                  Mutation("x_adv:0-dim", lambda s, g: s.update({k: s[k].reshape(-1)[0].clone()
                                                                for k in ("x_adv", "grad", "x_clean")}), "valid"),
                  Mutation("empty", lambda s, g: s.update({k: s[k][:0] for k in ("x_adv", "grad", "x_clean")}),
                           "valid")],
           in_place="x_adv"),
        Op("kd_loss", _kd_sample,
           [_float(("student_logits",), peers=("teacher_logits", "target")),
            _float(("teacher_logits",), peers=("student_logits",)),
            TensorArg(("target",), "index", BAD_INDEX, none="error", bound=lambda s: s["student_logits"].shape[-1],
                      peers=("hard_weight", "student_logits"))],
           scalar_mutations("temperature", finite_float([(0.0, "error"), (-1.0, "error")]))
           + scalar_mutations("soft_weight", finite_float()) + scalar_mutations("hard_weight", finite_float())
           + scalar_mutations("ignore_index", INT_SCALAR)
           + scalar_mutations("reduction", CHOICE + [("mean", "error")]), grads=("student_logits",),
           sizes=[(("student_logits",), 2, ("teacher_logits", "student_logits")),
                  (("teacher_logits",), 0, ("teacher_logits",)), (("target",), 1, ("target",))],
           extra=[Mutation("target=None", _set(target=None, hard_weight=0.0), "valid"),
                  Mutation("target:int32", _edit(("target",), lambda t, g: t.int()), "valid"),
                  Mutation("target:ignore_index", lambda s, g: s["target"].view(-1).__setitem__(0, -100), "valid"),
                  Mutation("reduction=none", _set(reduction="none"), "valid"),
                  Mutation("reduction=sum", _set(reduction="sum"), "valid"),
                  Mutation("C=1", lambda s, g: s.update(student_logits=s["student_logits"][..., :1],
                                                        teacher_logits=s["teacher_logits"][..., :1], soft_weight=0.0,
                                                        target=s["target"] * 0), "valid"),
                  Mutation("C=1,soft", lambda s, g: s.update(student_logits=s["student_logits"][..., :1],
                                                             teacher_logits=s["teacher_logits"][..., :1],
                                                             target=s["target"] * 0), "error",
                           ("student_logits", "soft_weight")),
                  Mutation("empty", lambda s, g: s.update({k: s[k][:0] for k in
                                                           ("student_logits", "teacher_logits", "target")}), "valid"),
                  Mutation("rank1", lambda s, g: s.update({k: s[k][0, 0] for k in
                                                           ("student_logits", "teacher_logits", "target")}), "valid")]),
        Op("linear_cka", lambda g: dict(x=_cka_features(g, 2, 6, 4), y=_cka_features(g, 2, 6, 3), debiased=False),
           [_float(("x",), peers=("y",)), _float(("y",), peers=("x",))],
           scalar_mutations("debiased", FLAG), grads=("x", "y"),
           sizes=[(("x",), 1, ("y", "x")), (("y",), 0, ("y", "x"))],
           extra=[Mutation("debiased", _set(debiased=True), "valid"),
                  Mutation("debiased,n=3", lambda s, g: s.update(x=s["x"][:, :3], y=s["y"][:, :3], debiased=True),
                           "error", ("x", "y")),
                  Mutation("n=1", lambda s, g: s.update(x=s["x"][:, :1], y=s["y"][:, :1]), "error", ("x", "y")),
                  Mutation("n=2", lambda s, g: s.update(x=s["x"][:, :2], y=s["y"][:, :2]), "valid"),
                  Mutation("d=0", lambda s, g: s.update(x=s["x"][..., :0]), "error", ("x",)),
                  Mutation("degenerate", lambda s, g: s.update(x=s["x"][:, :1].expand(2, 6, 4).contiguous()),
                           "valid"),
                  Mutation("degenerate-y", lambda s, g: s["y"][1].copy_(s["y"][1, :1].expand(6, 3)), "valid"),
                  Mutation("empty", lambda s, g: s.update(x=s["x"][:0], y=s["y"][:0]), "valid"),
                  Mutation("no-batch", lambda s, g: s.update(x=s["x"][0], y=s["y"][0]), "valid"),
                  Mutation("mixed-float", _edit(("y",), lambda t, g: t.double()), "match")]),
        Op("cka_matrix", lambda g: dict(xs=[_cka_features(g, 6, 4), _cka_features(g, 6, 3, 2)], ys=[_cka_features(g, 6, 5)],
                          debiased=False),
           [_float(("xs", 0), peers=("ys",)), _float(("xs", 1), peers=("ys",), rank_down=None),
            _float(("ys", 0), peers=("xs",))],
           scalar_mutations("debiased", FLAG), grads=("xs", "ys"),
           sizes=[(("xs", 1), 0, ("xs", "ys")), (("ys", 0), 0, ("ys", "xs"))],
           extra=[Mutation("xs=[]", _set(xs=[]), "error", ("xs",)),
                  Mutation("xs=None", _set(xs=None), "error", ("xs",)),
                  Mutation("xs='abc'", _set(xs="abc"), "error", ("xs",)),
                  Mutation("xs=5", _set(xs=5), "error", ("xs",)),
                  Mutation("ys:tensor-2d", lambda s, g: s.update(ys=s["ys"][0]), "error", ("ys",)),
                  Mutation("xs:stacked", lambda s, g: s.update(xs=torch.stack([s["xs"][0], s["xs"][0] * 2])),
                           "valid"),
                  Mutation("xs:stacked-empty", lambda s, g: s.update(xs=s["xs"][0][None][:0]), "valid"),
                  Mutation("xs:tuple", lambda s, g: s.update(xs=tuple(s["xs"])), "valid"),
                  Mutation("ys=xs", lambda s, g: s.update(ys=s["xs"]), "valid"),
                  Mutation("debiased", _set(debiased=True), "valid"),
                  Mutation("debiased,n=3", lambda s, g: s.update(xs=[t[:3] for t in s["xs"]],
                                                                 ys=[t[:3] for t in s["ys"]], debiased=True),
                           "error", ("xs", "ys")),
                  Mutation("degenerate", lambda s, g: s["xs"].__setitem__(0, s["xs"][0][:1].expand(6, 4).clone()),
                           "valid"),
                  Mutation("mixed-float", _edit(("ys", 0), lambda t, g: t.double()), "match")]),
        Op("pairwise_mlp_scores",
           lambda g: dict(a=randn(g, 2, 3, 4), b=randn(g, 2, 5, 4), w=randn(g, 4), bias=0.1),
           [_float(("a",), peers=("b", "w")), _float(("b",), peers=("a",)), _float(("w",), peers=("a",))],
           scalar_mutations("bias", finite_float()), grads=("a", "b", "w"),
           sizes=[(("a",), 0, ("a", "b")), (("a",), 2, ("a", "b", "w")), (("b",), 2, ("a", "b")),
                  (("w",), 0, ("w",))],
           extra=[Mutation("empty", lambda s, g: s.update(a=s["a"][:, :0]), "valid"),
                  Mutation("b:M=1", lambda s, g: s.update(b=s["b"][:, :1]), "valid"),
                  Mutation("mixed-float", _edit(("b",), lambda t, g: t.double()), "match"),
                  Mutation("bias=0-dim", _set(bias=torch.tensor(0.5)), "match")]),
        Op("temporal_iou", lambda g: dict(a=_spans(g, 4), b=_spans(g, 3)),
           [TensorArg(("a",), "span", (torch.bool, torch.complex64), peers=("b",)),
            TensorArg(("b",), "span", (torch.bool, torch.complex64), peers=("a",))],
           sizes=[(("a",), 1, ("a",)), (("b",), 1, ("b",))],
           extra=[Mutation("int64", _all_int64(("a", "b")), "valid"),
                  Mutation("int32", lambda s, g: s.update(a=s["a"].int(), b=s["b"].int()), "valid"),
                  Mutation("empty", lambda s, g: s.update(a=s["a"][:0]), "valid"),
                  Mutation("inverted", lambda s, g: s.update(a=s["a"].flip(1)), "valid"),
                  Mutation("mixed", lambda s, g: s.update(b=s["b"].long()), "match")]),
        Op("span_nms",
           lambda g: dict(spans=_spans(g, 8), scores=torch.rand(8, generator=g), iou_threshold=0.3,
                          groups=randint(g, 0, 2, 8), max_keep=-1),
           [TensorArg(("spans",), "span", (torch.bool, torch.complex64), peers=("scores", "groups")),
            _float(("scores",), peers=("spans",)),
            TensorArg(("groups",), "index", BAD_INDEX64, none="valid", peers=("spans",))],
           scalar_mutations("iou_threshold", [(None, "error"), ("abc", "error"), (True, "error"), (NAN, "error"),
                                              (INF, "error"), (-INF, "error"), (-1.0, "match"), (1.5, "match")])
           + scalar_mutations("max_keep", [(None, "error"), ("abc", "error"), (1.5, "error"), (True, "error"),
                                           (2**31, "valid"), (2**63, "match"), (-2**63, "match"), (0, "valid"),
                                           (1, "valid")]),
           sizes=[(("spans",), 0, ("spans", "scores", "groups")), (("spans",), 1, ("spans",)),
                  (("scores",), 0, ("scores",)), (("groups",), 0, ("groups",))],
           extra=[Mutation("max_keep=2", _set(max_keep=2), "valid"),
                  Mutation("groups=None", _set(groups=None), "valid"),
                  Mutation("spans:int64", lambda s, g: s.update(spans=(s["spans"] * 3).long()), "valid"),
                  Mutation("empty", lambda s, g: s.update(spans=s["spans"][:0], scores=s["scores"][:0],
                                                          groups=s["groups"][:0]), "valid"),
                  Mutation("ties", lambda s, g: s.update(scores=torch.full((8,), 0.5)), "valid"),
                  Mutation("threshold=0", _set(iou_threshold=0.0), "valid")],
           upcast_reference=False, data_dependent_shape=True),
        Op("trajectory_viou",
           lambda g: dict(boxes_a=_boxes(g, 3, 6), span_a=_frame_spans(g, 3, 6), boxes_b=_boxes(g, 2, 6),
                          span_b=_frame_spans(g, 2, 6), pixel_inclusive=True),
           [TensorArg(("boxes_a",), "float", (torch.bool, torch.complex64), peers=("span_a", "boxes_b")),
            TensorArg(("span_a",), "index", BAD_INDEX64, peers=("boxes_a",)),
            TensorArg(("boxes_b",), "float", (torch.bool, torch.complex64), peers=("span_b", "boxes_a")),
            TensorArg(("span_b",), "index", BAD_INDEX64, peers=("boxes_b",))],
           scalar_mutations("pixel_inclusive", FLAG),
           sizes=[(("boxes_a",), 0, ("span_a", "boxes_a")), (("boxes_a",), 1, ("boxes_b", "boxes_a")),
                  (("boxes_a",), 2, ("boxes_a",)), (("span_a",), 1, ("span_a",)), (("span_b",), 0, ("span_b",))],
           extra=[Mutation("pixel_inclusive=False", _set(pixel_inclusive=False), "valid"),
                  Mutation("boxes:int64", lambda s, g: s.update(boxes_a=s["boxes_a"].long(),
                                                                boxes_b=s["boxes_b"].long()), "valid"),
                  Mutation("boxes:uint8", lambda s, g: s.update(boxes_a=s["boxes_a"].to(torch.uint8)), "valid"),
                  Mutation("span:inverted", lambda s, g: s.update(span_a=s["span_a"].flip(1)), "valid"),
                  Mutation("nan-outside-span", lambda s, g: (s.update(span_a=s["span_a"].clamp(max=3)),
                                                             s["boxes_a"].__setitem__((slice(None), 5), NAN)),
                           "valid"),
                  Mutation("empty", lambda s, g: s.update(boxes_a=s["boxes_a"][:0], span_a=s["span_a"][:0]),
                           "valid"),
                  Mutation("T=0", lambda s, g: s.update(boxes_a=s["boxes_a"][:, :0], boxes_b=s["boxes_b"][:, :0]),
                           "valid")]),
        Op("pair_mix",
           lambda g: dict(x=randn(g, 4, 3), partner=randint(g, 0, 4, 4), lam=torch.rand(4, generator=g)),
           [_float(("x",), peers=("partner", "lam")),
            TensorArg(("partner",), "index", BAD_INDEX64, bound=lambda s: s["x"].shape[0], peers=("x",)),
            _float(("lam",), rank_down="valid", peers=("x",), values={"1e30": "runs"})],
           scalar_mutations("lam", [(None, "error"), ("abc", "error"), (True, "error"), (0.3, "valid"),
                                    (0.0, "valid"), (1, "valid"), (1.5, "valid"), (NAN, "match"), (INF, "match")]),
           grads=("x", "lam"),
           sizes=[(("x",), 0, ("x", "partner", "lam")), (("partner",), 0, ("partner",)), (("lam",), 0, ("lam",))],
           extra=[Mutation("lam:0-dim", _edit(("lam",), lambda t, g: t[0]), "valid"),
                  Mutation("empty", lambda s, g: s.update(x=s["x"][:0], partner=s["partner"][:0], lam=0.5), "valid"),
                  Mutation("mixed-float", _edit(("lam",), lambda t, g: t.double()), "match")]),
        Op("mixed_logits_cross_entropy",
           lambda g: dict(logits=randn(g, 4, 5, scale=2.0), partner=randint(g, 0, 4, 4), lam=torch.rand(4, generator=g),
                          target=torch.cat([randint(g, 0, 5, 3), torch.tensor([4])]), reduction="mean"),
           [_float(("logits",), peers=("partner", "lam", "target")),
            TensorArg(("partner",), "index", BAD_INDEX64, bound=lambda s: s["logits"].shape[0], peers=("logits",)),
            _float(("lam",), rank_down="valid", peers=("logits",), values={"1e30": "runs"}),
            TensorArg(("target",), "index", BAD_INDEX64, bound=lambda s: s["logits"].shape[1], peers=("logits",))],
           scalar_mutations("lam", [(None, "error"), ("abc", "error"), (True, "error"), (0.3, "valid"),
                                    (NAN, "match")])
           + scalar_mutations("reduction", CHOICE), grads=("logits", "lam"),
           sizes=[(("logits",), 0, ("logits", "partner", "lam", "target")), (("target",), 0, ("target",)),
                  (("logits",), 1, ("logits", "target"))],
           extra=[Mutation("reduction=none", _set(reduction="none"), "valid"),
                  Mutation("reduction=sum", _set(reduction="sum"), "valid"),
                  Mutation("C=1", lambda s, g: s.update(logits=s["logits"][:, :1], target=s["target"] * 0), "valid"),
                  Mutation("empty", lambda s, g: s.update(logits=s["logits"][:0], partner=s["partner"][:0], lam=0.5,
                                                          target=s["target"][:0], reduction="sum"), "valid")]),
        Op("uniformity_loss", lambda g: dict(x=randn(g, 5, 3), t=2.0),
           [_float(("x",))],
           scalar_mutations("t", [(None, "error"), ("abc", "error"), (NAN, "error"), (INF, "error"),
                                  (-1.0, "error"), (True, "error"), (0.0, "valid"), (3, "valid"), (1e30, "match")]),
           grads=("x",),
           extra=[Mutation("N=1", lambda s, g: s.update(x=s["x"][:1]), "error", ("x",)),
                  Mutation("empty", lambda s, g: s.update(x=s["x"][:0]), "error", ("x",)),
                  Mutation("N=2", lambda s, g: s.update(x=s["x"][:2]), "valid"),
                  Mutation("duplicate-rows", lambda s, g: s.update(x=s["x"][:1].expand(5, 3).contiguous()), "valid"),
                  Mutation("far-apart", _edit(("x",), lambda t, g: t * 100), "valid")]),
        Op("expm", lambda g: dict(a=_vae_w(g, 2, 3, 3)),
           [_float(("a",), rank_up="valid", rank_down="valid")], grads=("a",),
           sizes=[(("a",), 2, ("a",))],
           extra=[Mutation("a:1-D", _edit(("a",), lambda t, g: t[0, 0]), "error", ("a",)),
                  Mutation("empty", _edit(("a",), lambda t, g: t[:0]), "valid"),
                  Mutation("n=0", _edit(("a",), lambda t, g: t[:, :0, :0]), "valid"),
                  Mutation("n=1", _edit(("a",), lambda t, g: t[:, :1, :1]), "valid"),
                  Mutation("large-norm", _edit(("a",), lambda t, g: t * 20), "valid")]),
        Op("symmetric_expm", lambda g: dict(w=_vae_w(g, 2, 3, 3)),
           [_float(("w",), rank_up="valid", rank_down="valid")], grads=("w",),
           sizes=[(("w",), 2, ("w",))],
           extra=[Mutation("w:1-D", _edit(("w",), lambda t, g: t[0, 0]), "error", ("w",)),
                  Mutation("empty", _edit(("w",), lambda t, g: t[:0]), "valid"),
                  Mutation("n=1", _edit(("w",), lambda t, g: t[:, :1, :1]), "valid"),
                  Mutation("repeated-eigenvalues", _edit(("w",), lambda t, g: torch.eye(3).expand(2, 3, 3).clone()),
                           "valid")]),
        Op("ipe_transform", lambda g: dict(z=randn(g, 4, 3), w=_vae_w(g, 2, 2, 3, 3)),
           [_float(("z",), peers=("w",)), _float(("w",), peers=("z",))], grads=("z", "w"),
           sizes=[(("z",), 1, ("z", "w")), (("w",), 3, ("w",)), (("w",), 2, ("w",))],
           extra=[Mutation("empty", _edit(("z",), lambda t, g: t[:0]), "valid"),
                  Mutation("U=0", _edit(("w",), lambda t, g: t[:0]), "valid"),
                  Mutation("K=0", _edit(("w",), lambda t, g: t[:, :0]), "valid"),
                  Mutation("mixed-float", _edit(("w",), lambda t, g: t.double()), "match")]),
        Op("composite_symmetry",
           lambda g: dict(codebook=_vae_w(g, 3, 3, 3), weights=torch.rand(4, 3, generator=g), z1=randn(g, 4, 3),
                          z2=randn(g, 4, 3)),
           [_float(("codebook",), peers=("weights", "z1", "z2")), _float(("weights",), peers=("codebook",)),
            _float(("z1",), peers=("weights", "codebook")), _float(("z2",), peers=("weights", "codebook"))],
           grads=("codebook", "weights", "z1", "z2"),
           sizes=[(("codebook",), 2, ("codebook",)), (("codebook",), 0, ("weights", "codebook")),
                  (("weights",), 0, ("z1", "z2", "weights")), (("z2",), 1, ("z2",))],
           extra=[Mutation("empty", lambda s, g: s.update(weights=s["weights"][:0], z1=s["z1"][:0], z2=s["z2"][:0]),
                           "valid"),
                  Mutation("z1=z2", lambda s, g: s.update(z2=s["z1"]), "valid"),
                  Mutation("mixed-float", _edit(("z1",), lambda t, g: t.double()), "match")]),
    ]
    table = {}
    for op in ops_:
        sample = op.base(torch.Generator().manual_seed(0))
        op.base_shapes = {arg.label: tuple(_get(sample, arg.path).shape) for arg in op.tensors}
        muts = [Mutation("base", lambda s, g: None, "valid")]
        for arg in op.tensors:
            muts += tensor_mutations(op, arg)
        muts += op.scalars + size_mutations(op.sizes) + op.extra
        muts.append(Mutation("half", _all_floats(torch.float16), "valid"))
        muts.append(Mutation("bfloat16", _all_floats(torch.bfloat16), "valid"))
        if op.grads:
            for layout in ("contiguous", "noncontig", "transposed", "expanded"):
                muts.append(Mutation(f"backward:{layout}", lambda s, g: None, "backward"))
        muts.append(Mutation("backend='bogus'", _set(backend="bogus"), "error", ("backend",), ("-",)))
        muts.append(Mutation("backend=None", _set(backend=None), "error", ("backend",), ("-",)))
        muts.append(Mutation("meta", lambda s, g: None, "meta", (), ("auto",)))
        muts.append(Mutation("compile", lambda s, g: None, "compile", (), ("cpu",)))
        muts.append(Mutation("compile-scalar-inputs", lambda s, g: None, "compile", (), ("cpu",)))
        op.mutations = {m.name: m for m in muts}
        assert len(op.mutations) == len(muts), f"{op.name}: duplicate mutation names"
        table[op.name] = op
    return table


def _one_buffer(shift):
    """x_adv and grad as two views of one buffer: disjoint (shift 0) or sharing rows (shift 1)."""
    def apply(s, g):
        buf = torch.cat([s["x_adv"], s["grad"]])
        n = s["x_adv"].shape[0]
        s.update(x_adv=buf[:n], grad=buf[n - shift:2 * n - shift])
    return apply


def _all_int64(names):
    def apply(s, g):
        for k in names:
            s[k] = (s[k] * 3).long()
    return apply


# ---- cases ---------------------------------------------------------------------------------------

OPS = None


def _ops():
    global OPS
    if OPS is None:
        OPS = build_ops()
    return OPS


def device_of(backend: str) -> torch.device:
    """Where a backend's case tensors live: CUDA for cuda (and for triton when there is a GPU)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def backends() -> tuple:
    """cpu, triton (the interpreter on CPU tensors without a GPU), reference, and cuda: those that
    can run here."""
    from pyfastlab.ops import _backends
    usable = [b for b in ("cpu", "triton", "reference", "cuda")
              if b == "reference" or _backends.unavailable_reason(b, device_of(b)) is None]
    return tuple(b for b in usable if device_of(b).type == "cpu" or torch.cuda.is_available())


def _interpreted() -> bool:
    return device_of("triton").type == "cpu"


def case_ids(only_ops=None) -> list:
    ids = []
    for name, op in _ops().items():
        if only_ops and name not in only_ops:
            continue
        for m in op.mutations.values():
            for backend in (m.backends if m.backends is not None else backends()):
                if m.name in ("half", "bfloat16") and backend == "triton" and _interpreted():
                    continue  # the Triton interpreter has no half arithmetic (documented)
                ids.append(f"{name}/{m.name}/{backend}")
    return ids


def seed_of(case_id: str) -> int:
    """The generator seed of a case: from SEED, the op and the mutation (every backend of a
    mutation gets the same inputs)."""
    return zlib.crc32(f"{SEED}:{case_id.rsplit('/', 1)[0]}".encode())


def build(case_id: str):
    """(op, mutation, backend, sample) of a case; the sample is the op's keyword arguments."""
    name, rest = case_id.split("/", 1)
    mut_name, backend = rest.rsplit("/", 1)
    op = _ops()[name]
    mut = op.mutations[mut_name]
    gen = torch.Generator().manual_seed(seed_of(case_id))
    sample = op.base(gen)
    mut.apply(sample, gen)
    if backend in ("cuda", "triton") and device_of(backend).type == "cuda":
        sample = _map(sample, lambda t: to_device(t, "cuda"))
    return op, mut, backend, sample


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """t on device with the same strides and storage offset (expanded, overlapping and gapped
    views too): its whole storage is copied and viewed the same way."""
    n = t.untyped_storage().nbytes() // t.element_size()
    flat = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage(), 0, (n,), (1,))
    return flat.to(device).as_strided(t.shape, t.stride(), t.storage_offset()).requires_grad_(t.requires_grad)


# ---- running one case ----------------------------------------------------------------------------

def _map(v, fn):
    if isinstance(v, torch.Tensor):
        return fn(v)
    if isinstance(v, dict):
        return {k: _map(x, fn) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_map(x, fn) for x in v)
    return v


def _tensors(v, label=""):
    if isinstance(v, torch.Tensor):
        yield label, v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _tensors(x, k)
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            yield from _tensors(x, f"{label}[{i}]")


def describe(v) -> str:
    """One line: tensors as dtype[shape] with strides when not contiguous and a hint of the values."""
    if isinstance(v, torch.Tensor):
        dt = str(v.dtype).replace("torch.", "")
        text = f"{dt}{list(v.shape)}"
        if v.device.type != "cpu":
            text += f"@{v.device.type}"
        if not v.is_contiguous() and v.numel() > 1:
            text += f".stride{tuple(v.stride())}"
        if v.device.type != "meta" and 0 < v.numel() <= 4:
            text += f"={v.tolist()}"
        elif v.device.type != "meta" and v.numel():
            flat = v.reshape(-1)
            if not v.is_complex() and v.dtype != torch.bool and v.is_floating_point():
                odd = [f"{x}" for x in flat.tolist() if not math.isfinite(x) or abs(x) >= 1e29]
                if odd:
                    text += f"(has {', '.join(sorted(set(odd)))})"
            elif not v.is_floating_point() and not v.is_complex() and v.dtype != torch.bool:
                text += f"(in [{int(flat.min())}, {int(flat.max())}])"
        return text
    if isinstance(v, dict):
        return ", ".join(f"{k}={describe(x)}" for k, x in v.items())
    if isinstance(v, list):
        if v and all(isinstance(x, (int, float, bool, list)) for x in v):
            return f"<list len {len(v)}>"
        return "[" + ", ".join(describe(x) for x in v) + "]"
    if isinstance(v, tuple):
        return "(" + ", ".join(describe(x) for x in v) + ")"
    return repr(v)


def call_text(name: str, sample: dict, backend: str) -> str:
    kw = dict(sample)
    if "backend" not in kw:
        kw["backend"] = backend
    return f"ops.{name}({describe(kw)})"


def names_argument(message: str, names) -> bool:
    """Does the message name one of the arguments? One- and two-letter names (a, b, w, x, lo) must
    read as the subject of the message ("x must ...", "x[0] ...", "'x'"), not as an article."""
    for n in names:
        e = re.escape(n)
        if len(n) <= 2:
            pat = (rf"(?:^|[\s'\"`(/,|])(?:{e})(?:\s+(?:must|has|is|was|are|of|contains|needs|and|or|as|with|"
                   rf"cannot|should|got|=)\b|\s*[\[\]:=,)'\"`/|]|$)")
        else:
            pat = rf"(?<![A-Za-z0-9_]){e}(?![A-Za-z0-9_])"
        if re.search(pat, message):
            return True
    return False


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if a.is_floating_point():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return torch.equal(a, b)


def _snapshot(sample: dict, in_place: str | None):
    """(label, tensor, copy) of every input the op must not write, and of the buffers under views
    (a write outside the view shows there), except buffers shared with the in-place argument."""
    written = sample.get(in_place) if in_place else None
    written_ptr = written.untyped_storage().data_ptr() if isinstance(written, torch.Tensor) else None
    snap = []
    for label, t in _tensors(sample):
        if t.device.type == "meta" or label == in_place:
            continue
        snap.append((label, t, t.detach().clone()))
        if t._base is not None and t.untyped_storage().data_ptr() != written_ptr:
            snap.append((f"{label} (its buffer)", t._base, t._base.detach().clone()))
    return snap


def _mutated(snap) -> list:
    return [label for label, t, before in snap if not _same(t.detach(), before)]


def _to_reference(v, upcast: bool):
    def conv(t):
        t = t.detach()
        if upcast and t.is_floating_point():
            t = t.double()
        return t.clone(memory_format=torch.contiguous_format)
    return _map(v, conv)


def _min_float_dtype(sample):
    best = None
    for _, t in _tensors(sample):
        if t.is_floating_point() and (best is None or TOLERANCE[t.dtype] > TOLERANCE[best]):
            best = t.dtype
    return best or torch.float32


def compare(got, want, dtype) -> str | None:
    """None if got matches want (NaN where want is NaN), else what differs."""
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"structure: got {describe(got)}, want {describe(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            diff = compare(a, b, dtype)
            if diff:
                return f"output {i}: {diff}"
        return None
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        return None if got == want else f"got {got!r}, want {want!r}"
    if tuple(got.shape) != tuple(want.shape):
        return f"shape {tuple(got.shape)} != reference {tuple(want.shape)}"
    got, want = got.detach().cpu(), want.detach().cpu()
    if not want.is_floating_point() and not got.is_floating_point():
        return None if torch.equal(got.long(), want.long()) else f"got {got.tolist()}, reference {want.tolist()}"
    tol = TOLERANCE[dtype]
    try:
        torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol, equal_nan=True)
    except AssertionError as exc:
        lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
        vals = f"got {got.reshape(-1)[:6].tolist()}, reference {want.reshape(-1)[:6].tolist()}"
        return "; ".join(lines[:3]) + f" ({vals})"
    return None


def _error_text(exc) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]


def _call(fn, sample, backend):
    kw = dict(sample)
    kw.setdefault("backend", backend)
    return fn(**kw)


def run_case(case_id: str) -> dict:
    result = {"id": case_id}
    try:
        op, mut, backend, sample = build(case_id)
    except Exception as exc:  # a bug of this table, not of the op
        result.update(outcome="harness_error", detail=f"building the case: {_error_text(exc)}")
        return result
    result["call"] = call_text(op.name, sample, backend)
    if mut.expect == "meta":
        result["call"] += "  # every tensor .to('meta')"
    elif mut.expect == "backward":
        result["call"] += f"  # then .backward() through {mut.name.split(':')[-1]} floating inputs"
    fn = getattr(ops, op.name)
    saved_env = {k: os.environ.get(k) for k in (mut.env or {})}
    os.environ.update(mut.env or {})
    try:
        if mut.expect == "compile":
            outcome, detail = _run_compile(op, mut, fn, sample, backend)
        elif mut.expect == "meta":
            outcome, detail = _run_meta(op, fn, sample, backend)
        elif mut.expect == "backward":
            outcome, detail = _run_backward(op, mut, fn, sample, backend)
        else:
            outcome, detail = _run_call(op, mut, fn, sample, backend)
    except Exception as exc:  # the harness itself failed
        import traceback
        outcome, detail = "harness_error", _error_text(exc) + " | " + traceback.format_exc(limit=-2).replace("\n", " ")
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if mut.env:
        result["call"] = " ".join(f"{k}={v}" for k, v in mut.env.items()) + " " + result["call"]
    result.update(outcome=outcome, detail=detail)
    return result


def _run_call(op, mut, fn, sample, backend):
    reference_sample = _to_reference(sample, op.upcast_reference)
    snap = _snapshot(sample, op.in_place)
    try:
        got = _call(fn, sample, backend)
        error = None
    except ValueError as exc:
        got, error = None, exc
    except Exception as exc:
        changed = _mutated(snap)
        extra = f" (and mutated {changed})" if changed else ""
        return "wrong_error", _error_text(exc) + extra
    changed = _mutated(snap)
    if changed:
        return "mutated_input", f"the call modified {', '.join(changed)}" + (f"; {_error_text(error)}" if error else "")
    if mut.expect == "runs":
        return ("ok", "") if error is None else ("clear_error", _error_text(error))
    if mut.expect == "error":
        if error is None:
            return "no_error", f"returned {describe(got)} for a bad {'/'.join(mut.names)}"
        if not names_argument(str(error), mut.names):
            return "unnamed_error", f"message does not name {'/'.join(mut.names)}: {_error_text(error)}"
        return "clear_error", _error_text(error)
    if error is not None:
        if mut.expect == "valid":
            return "rejected_valid", _error_text(error)
        if mut.names and not names_argument(str(error), mut.names):  # a refusal must be clear too
            return "unnamed_error", f"refused without naming {'/'.join(mut.names)}: {_error_text(error)}"
        return "refused", _error_text(error)
    try:
        want = _call(fn, reference_sample, "reference")
    except Exception as exc:
        return "mismatch", f"the backend returned {describe(got)} but the float64 reference raised {_error_text(exc)}"
    diff = compare(got, want, _min_float_dtype(sample))
    if diff:
        return "mismatch", diff
    return "match", ""


def _grad_leaves(sample, names, layout):
    """The sample with the differentiable tensors (members of lists too) as leaves that require
    grad, in the given layout; and those leaves."""
    leaves = []

    def leaf(t):
        t = t.detach()
        if layout in LAYOUTS and t.dim() >= (2 if layout == "transposed" else 1):
            t = LAYOUTS[layout](t, None)
        t.requires_grad_(True)
        leaves.append(t)
        return t

    out = dict(sample)
    for k in names:
        if isinstance(out[k], torch.Tensor) and out[k].is_floating_point():
            out[k] = leaf(out[k])
        elif isinstance(out[k], (list, tuple)):
            out[k] = [leaf(t) for t in out[k]]
    return out, leaves


def _backward_grads(fn, sample, names, layout, backend, weights_seed):
    sample, leaves = _grad_leaves(sample, names, layout)
    out = _call(fn, sample, backend)
    gen = torch.Generator().manual_seed(weights_seed)
    loss = 0
    for _, o in _tensors(out):
        if o.requires_grad:
            w = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)
            loss = loss + (torch.where(torch.isfinite(o), o, torch.zeros_like(o)).double() * w).sum()
    if not isinstance(loss, torch.Tensor):
        return out, [None] * len(leaves)
    return out, list(torch.autograd.grad(loss, leaves, allow_unused=True))


def _run_backward(op, mut, fn, sample, backend):
    """Gradients of a random weighting of the outputs w.r.t. the differentiable inputs (made
    non-contiguous / transposed / stride-0 by the layout), against the float64 reference."""
    layout = mut.name.split(":", 1)[1]
    seed = seed_of(f"{op.name}/{mut.name}")
    reference_sample = _to_reference(sample, True)
    snap = _snapshot(sample, op.in_place)
    try:
        _, got = _backward_grads(fn, sample, op.grads, layout, backend, seed)
    except ValueError as exc:
        return "rejected_valid", _error_text(exc)
    except Exception as exc:
        return "wrong_error", _error_text(exc)
    changed = _mutated(snap)
    if changed:
        return "mutated_input", f"the call or its backward modified {', '.join(changed)}"
    _, want = _backward_grads(fn, reference_sample, op.grads, layout, "reference", seed)
    dtype = _min_float_dtype(sample)
    for i, (a, b) in enumerate(zip(got, want)):
        if a is None or b is None:
            other = b if a is None else a
            if other is not None and bool((other != 0).any()):
                return "mismatch", f"gradient {i}: {'None' if a is None else 'a tensor'} where the reference has " \
                                   f"{'None' if b is None else 'a nonzero tensor'}"
            continue
        scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
        diff = compare(a / scale, b / scale, dtype)
        if diff:
            return "mismatch", f"gradient of input {i} (scaled by 1/{scale:.3g}): {diff}"
    return "match", ""


def _run_meta(op, fn, sample, backend):
    reference_sample = _to_reference(sample, op.upcast_reference)
    want = _call(fn, reference_sample, "reference")
    meta = _map(sample, lambda t: t.to("meta"))
    try:
        got = _call(fn, meta, backend)
    except ValueError as exc:
        return "clear_error", _error_text(exc)
    except Exception as exc:
        return "wrong_error", _error_text(exc)
    flat_got, flat_want = list(_tensors(got)), list(_tensors(want))
    if len(flat_got) != len(flat_want):
        return "mismatch", f"meta call returned {describe(got)}, reference {describe(want)}"
    for (_, a), (_, b) in zip(flat_got, flat_want):
        if a.device.type != "meta":
            return "mismatch", f"meta inputs gave a {a.device.type} output {describe(a)}"
        if op.data_dependent_shape:
            if a.dim() != b.dim():
                return "mismatch", f"meta output {describe(a)}, reference {describe(b)}"
        elif tuple(a.shape) != tuple(b.shape):
            return "mismatch", f"meta output shape {tuple(a.shape)} != reference {tuple(b.shape)}"
    return "match", ""


def _run_compile(op, mut, fn, sample, backend):
    """The op under torch.compile(fullgraph=True, dynamic=True) on the base sample, against eager:
    "compile" passes the tensors as the compiled function's inputs and the scalars as constants;
    "compile-scalar-inputs" passes the scalars as inputs too (Dynamo makes them SymFloat/SymInt)."""
    torch._dynamo.reset()
    eager_sample = _map(sample, lambda t: t.clone())
    want = _call(fn, eager_sample, backend)
    if mut.name == "compile":
        inputs = {k: v for k, v in sample.items() if list(_tensors(v))}
        constants = {k: v for k, v in sample.items() if k not in inputs}
    else:
        inputs, constants = sample, {}
    compiled = torch.compile(lambda **kw: fn(**kw, **constants, backend=backend), fullgraph=True, dynamic=True)
    try:
        got = compiled(**inputs)
    except Exception as exc:
        where = [l.strip() for l in str(exc).splitlines() if l.strip().startswith("File ")]
        return "compile_failed", _error_text(exc) + (f" at {where[-1]}" if where else "")
    diff = compare(got, want, _min_float_dtype(sample))
    if diff:
        return "compile_failed", f"compiled differs from eager: {diff}"
    return "match", ""
