"""Prints the benchmark summary (one line per case, 80 columns) and writes every implementation's
figures as JSON, Markdown and a PNG chart."""
from __future__ import annotations

import dataclasses
import json
import pathlib

from .runner import Result

COLUMNS = ("op", "case", "backend", "fwd+bwd ms", "1st call ms", "vs eager", "vs compiled", "GB/s", "% copy bw",
           "peak extra [N,C]", "status")


def _fmt(value, spec, suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _num(value: float) -> str:
    return f"{value:.2f}" if value < 1 else (f"{value:.2g}" if value < 10 else f"{value:.0f}")


def _ratio(value, spread) -> str:
    """'3.1x 2.9-3.3': the median of the per-round ratios and their range."""
    if value is None:
        return "-"
    low, high = spread or (value, value)
    return f"{_num(value)}x {_num(low)}-{_num(high)}"


def rows(results: list[Result]) -> list[tuple[str, ...]]:
    out = []
    for r in results:
        status = "ok" if r.error is None else f"FAIL: {r.error}"
        out.append((r.op, f"{r.label} {r.dtype} {r.device}", r.implementation, _fmt(r.median_ms, ".3f"),
                    _fmt(r.first_call_ms, ".1f"), _ratio(r.speedup_vs_eager, r.spread_vs_eager),
                    _ratio(r.speedup_vs_compiled, r.spread_vs_compiled),
                    _fmt(r.gbps, ".1f"), _fmt(r.copy_fraction and 100 * r.copy_fraction, ".0f", "%"),
                    _fmt(r.peak_extra_units, ".2f"), status))
    return out


def summary_lines(results: list[Result]) -> list[str]:
    """One line per case: the fastest pyfastlab backend that passed its check, its ratio to eager and
    to torch.compile (median and range over the interleaved rounds) and its share of the copy
    bandwidth (bytes an ideal one-pass kernel moves, over the time). 80 columns."""
    op_w = min(26, max(len(r.op) for r in results))
    case_w = 78 - op_w - 6 - 15 - 15 - 5 - 5  # the case label gets what the other columns leave
    lines = [f"{'op':<{op_w}} {'case':<{case_w}} {'best':<6} {'vs eager':>15} {'vs compiled':>15} {'% bw':>5}",
             "-" * 78]
    for case in dict.fromkeys(r.case for r in results):
        members = [r for r in results if r.case == case]
        ours = [r for r in members if r.kind == "pyfastlab" and r.error is None and r.speedup_vs_eager]
        first = members[0]
        if not ours:
            failed = next((r for r in members if r.error), None)
            why = f"FAIL {failed.implementation}: {failed.error}" if failed else "no backend ran"
            lines.append(f"{first.op:<{op_w}.{op_w}} {first.label:<{case_w}.{case_w}} {why[:42]}")
            continue
        best = max(ours, key=lambda r: r.speedup_vs_eager)
        bound = "-" if best.copy_fraction is None else f"{100 * best.copy_fraction:.0f}%"
        lines.append(f"{best.op:<{op_w}.{op_w}} {best.label:<{case_w}.{case_w}} {best.implementation:<6.6} "
                     f"{_ratio(best.speedup_vs_eager, best.spread_vs_eager):>15} "
                     f"{_ratio(best.speedup_vs_compiled, best.spread_vs_compiled):>15} {bound:>5}")
    return lines


def write_markdown(results: list[Result], path: pathlib.Path, header: str):
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    path.write_text("\n".join(lines) + "\n")


def write_json(results: list[Result], path: pathlib.Path, meta: dict):
    path.write_text(json.dumps({"meta": meta, "results": [dataclasses.asdict(r) for r in results]}, indent=2))


def write_chart(results: list[Result], path: pathlib.Path) -> bool:
    """Bar chart of each implementation's speedup over eager, one group per case."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = list(dict.fromkeys(r.case for r in results))
    impls = [name for name in dict.fromkeys(r.implementation for r in results) if name != "eager"]
    if not cases or not impls:
        return False
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(cases)), 5))
    for k, name in enumerate(impls):
        values = []
        for case in cases:
            match = [r for r in results if r.case == case and r.implementation == name]
            values.append(match[0].speedup_vs_eager or 0.0 if match else 0.0)
        ax.bar([i + k * width for i in range(len(cases))], values, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(cases))])
    ax.set_xticklabels([c.replace("[", "\n[") for c in cases], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("speedup over eager (x)")
    ax.set_title("pyfastlab: fwd+bwd speedup over the eager PyTorch chain (same run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
