"""The `pyfastlab` command: info | check | bench | demo."""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import pathlib
import platform
import sys
import warnings

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

console = Console()


def cmd_info(args) -> int:
    import pyfastlab

    info = pyfastlab.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    table = Table(title="pyfastlab", show_header=False)
    for key, value in info.items():
        if key != "backends":
            table.add_row(key, str(value))
    for op, backends in info["backends"].items():
        table.add_row(f"backends: {op}", ", ".join(backends))
    console.print(table)
    return 0


def cmd_check(args) -> int:
    from ._loader import C_LOAD_ERROR, has_compiled_ops
    from .checks import run_checks

    if not has_compiled_ops() and not args.allow_reference:
        console.print(f"[red]the compiled kernels did not load[/] ({C_LOAD_ERROR}): reinstall pyfastlab against this "
                      "torch, or pass --allow-reference to check only what runs without them", highlight=False)
        return 1
    results = run_checks(seed=args.seed)
    table = Table(title="pyfastlab check: every backend against the reference (fresh random inputs)")
    for name in ("op", "backend", "device", "dtype", "forward", "backward", "detail"):
        table.add_column(name)
    failed = 0
    for r in results:
        ok = r.forward_ok and r.backward_ok
        failed += not ok
        mark = lambda good: "[green]pass[/]" if good else "[red]FAIL[/]"
        table.add_row(r.op, r.backend, r.device, r.dtype, mark(r.forward_ok), mark(r.backward_ok), r.detail)
    console.print(table)
    if not results:
        console.print("no kernel backend can run here (the compiled extension did not load and Triton cannot "
                      "run): nothing was checked; see `pyfastlab info`")
        return 0 if args.allow_reference else 1
    console.print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_bench(args) -> int:
    from .bench import all_cases
    from .bench.report import summary_lines, write_chart, write_json, write_markdown
    from .bench.runner import copy_bandwidth, run_case

    # torch.compile's own notices (no CUDA runtime found, deprecations inside inductor) are not ours
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\._inductor")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device:
        devices = [args.device]
    cases = [c for d in devices for c in all_cases(args.family, d) if not args.op or c.op == args.op]
    if not args.full:  # the default run: the first case of each op per device
        cases = list({(c.op, c.device): c for c in reversed(cases)}.values())[::-1]
    if not cases:
        console.print("[red]no benchmark case matches[/]")
        return 1
    mode = "full" if args.full else ("quick" if args.quick else "default")
    scale = {"full": 1.0, "default": 1 / 4, "quick": 1 / 16}[mode]
    rounds = args.rounds or {"full": 9, "default": 7, "quick": 3}[mode]
    warmup = 2 if args.full else 1
    copy_bytes = 2**30 if args.full else 2**28
    copy_bps = {d: copy_bandwidth(d, copy_bytes) for d in devices}
    for d, bps in copy_bps.items():
        console.print(f"copy bandwidth on {d}: {bps / 1e9:.1f} GB/s (read + write of {copy_bytes >> 20} MiB)")
    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(cases))
        for case in cases:
            progress.update(task, description=f"{case.name}")
            results += run_case(case, scale=scale, rounds=rounds, warmup=warmup, copy_bps=copy_bps[case.device],
                                measure_memory=args.full)
            progress.advance(task)
    title = f"pyfastlab bench, {mode}: sizes x{scale:g}, {len(cases)} cases, {rounds} interleaved rounds"
    console.print(title, highlight=False)
    for line in summary_lines(results):
        console.print(line, highlight=False, markup=False)
    out = pathlib.Path(args.out) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
                threads=torch.get_num_threads(), mode=mode, scale=scale, rounds=rounds,
                copy_gbps={d: bps / 1e9 for d, bps in copy_bps.items()},
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    write_json(results, out / "bench.json", meta)
    write_markdown(results, out / "bench.md", f"# pyfastlab bench\n\n`{json.dumps(meta)}`")

    chart = write_chart(results, out / "speedup.png")
    console.print("every implementation (times, GB/s, memory): bench.md, bench.json"
                  + (", speedup.png" if chart else " (no chart: matplotlib missing)") + f" in {out}", highlight=False)
    failures = [r for r in results if r.error]
    for r in failures:
        console.print(f"[red]{r.case} {r.implementation}: {r.error}[/]")
    return 1 if failures else 0


def cmd_demo(args) -> int:
    from .demos import DEMOS

    if args.family not in DEMOS:
        console.print(f"[red]no demo for family {args.family!r} yet; available: {', '.join(DEMOS) or 'none'}[/]")
        return 2
    return DEMOS[args.family](args.demo_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyfastlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, compiled backends, threads")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_info)
    p = sub.add_parser("check", help="every op on every available backend against the reference")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    p.add_argument("--allow-reference", action="store_true",
                   help="do not fail when the compiled kernels are missing (check what runs without them)")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("bench", help="benchmark every op against eager and torch.compile references")
    p.add_argument("--quick", action="store_true", help="N/16 sizes, 3 rounds (a smoke run)")
    p.add_argument("--full", action="store_true",
                   help="every case at full size, 9 rounds, peak memory (the long sweep; default: the first case "
                        "of each op at N/4, 7 rounds)")
    p.add_argument("--family", default=None)
    p.add_argument("--op", default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--out", default="results", help="folder for bench.json, bench.md, speedup.png")
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("demo", help="run a family's example")
    p.add_argument("family")
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
