"""Fuzz worker: runs the cases of cases.py named on stdin, one id per line, in this process.

Protocol (stdout, one JSON object per line after the marker "@@FUZZ "; other output is ignored):
{"event": "ready"} once torch and pyfastlab are imported, then per case {"event": "start", "id"}
before it runs and {"event": "result", "id", "outcome", "detail", "call"} after, each flushed at
once, so that a crash is attributed to the case in progress. The environment (PYFASTLAB_CHECK,
TRITON_INTERPRET, PYFASTLAB_FUZZ_SEED) is the parent's.

By hand:  python tests/fuzz/worker.py --list [op ...]     the case ids
          python tests/fuzz/worker.py --repro CASE_ID     run one case, print the call, traceback
"""
from __future__ import annotations

import json
import os
import sys
import warnings

MARK = "@@FUZZ "


def emit(obj) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _load_cases():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cases  # noqa: E402  (imports torch and pyfastlab once per worker)
    return cases


def repro(case_id: str) -> None:
    cases = _load_cases()
    import traceback

    from pyfastlab import ops
    op, mut, backend, sample = cases.build(case_id)
    print(f"seed {cases.SEED}, expectation {mut.expect!r} (names {mut.names})")
    print(cases.call_text(op.name, sample, backend))
    if mut.expect in ("error", "match", "valid"):
        try:
            kw = dict(sample)
            kw.setdefault("backend", backend)
            print("->", cases.describe(getattr(ops, op.name)(**kw)))
        except Exception:
            traceback.print_exc()
    print(json.dumps(cases.run_case(case_id), indent=1))


def selftest(case_id: str) -> dict:
    """Cases that test the harness: selftest/abort/* dies, selftest/hang/* never returns."""
    kind = case_id.split("/")[1]
    if kind == "abort":  # dies as a segfaulting kernel would, without leaving a core file
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        import time
        time.sleep(3600)
    return {"id": case_id, "outcome": "ok", "detail": ""}


def serve() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    cases = _load_cases()
    emit({"event": "ready", "seed": cases.SEED})
    for line in sys.stdin:
        case_id = line.strip()
        if not case_id:
            continue
        emit({"event": "start", "id": case_id})
        result = selftest(case_id) if case_id.startswith("selftest/") else cases.run_case(case_id)
        result["event"] = "result"
        emit(result)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--list":
        print("\n".join(_load_cases().case_ids(sys.argv[2:] or None)))
    elif len(sys.argv) > 2 and sys.argv[1] == "--repro":
        repro(sys.argv[2])
    else:
        serve()
