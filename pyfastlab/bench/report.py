"""Prints the benchmark table and writes it as JSON, Markdown and a PNG chart."""
from __future__ import annotations

import dataclasses
import json
import pathlib

from rich.console import Console
from rich.table import Table

from .runner import Result

COLUMNS = ("op", "case", "backend", "fwd+bwd ms", "1st call ms", "vs eager", "vs compiled", "GB/s", "% copy bw",
           "peak extra [N,C]", "status")


def _fmt(value, spec, suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def rows(results: list[Result]) -> list[tuple[str, ...]]:
    out = []
    for r in results:
        status = "ok" if r.error is None else f"FAIL: {r.error}"
        out.append((r.op, f"{r.label} {r.dtype} {r.device}", r.implementation, _fmt(r.median_ms, ".3f"),
                    _fmt(r.first_call_ms, ".1f"), _fmt(r.speedup_vs_eager, ".2f", "x"), _fmt(r.speedup_vs_compiled, ".2f", "x"),
                    _fmt(r.gbps, ".1f"), _fmt(r.copy_fraction and 100 * r.copy_fraction, ".0f", "%"),
                    _fmt(r.peak_extra_units, ".2f"), status))
    return out


def print_table(results: list[Result], console: Console, title: str):
    table = Table(title=title, show_lines=False)
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("op", "case", "backend", "status") else "right")
    previous_case = None
    for row, r in zip(rows(results), results):
        if previous_case is not None and r.case != previous_case:
            table.add_section()
        previous_case = r.case
        style = "bold green" if r.kind == "pyfastlab" and r.error is None else ("red" if r.error else None)
        table.add_row(*row, style=style)
    console.print(table)


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
