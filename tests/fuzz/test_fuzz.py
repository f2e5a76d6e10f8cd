"""Adversarial fuzz test of every public op (the reliability issue): the cases of cases.py (wrong
dtypes, ranks, sizes, layouts, index extremes, NaN/inf/1e30, bad scalars, meta tensors,
torch.compile(dynamic=True)) run in 2 worker subprocesses, so a crash or a hang is isolated to its
case: a dead worker is replaced and goes on with the next case, a case past its time limit is a
hang. Fails listing every crash, hang, wrong exception type, error that does not name the
argument, bad input accepted, mismatch against the float64 reference, mutated input and compile
failure; prints the counts either way.

Environment: PYFASTLAB_FUZZ_SEED (fixed default, printed), PYFASTLAB_FUZZ_OPS (comma-separated op
names, default all), PYFASTLAB_FUZZ_WORKERS (default 2), PYFASTLAB_FUZZ_RESULTS (a file to write
every case's result to, one JSON line each). Reproduce one case by hand with
`python tests/fuzz/worker.py --repro 'op/mutation/backend'` (same environment).
"""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import pathlib
import queue
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
MARK = "@@FUZZ "
CASE_TIMEOUT_S = 60        # per case: past it the case is a hang
COMPILE_TIMEOUT_S = 180    # torch.compile cases
START_TIMEOUT_S = 180      # a worker importing torch, pyfastlab and (lazily) triton


def _load_cases():
    spec = importlib.util.spec_from_file_location("pyfastlab_fuzz_cases", HERE / "cases.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Worker:
    """One worker subprocess; `run(case_id)` -> its result dict, or a crash / hang result (the
    worker is then dead and must be replaced)."""

    def __init__(self):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env, bufsize=1)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = False

    def _pump(self):
        for line in self.proc.stdout:
            if MARK in line:
                try:
                    self.events.put(json.loads(line.split(MARK, 1)[1]))
                except json.JSONDecodeError:  # a torn line: its case then ends as a crash or hang
                    pass
        self.events.put(None)  # end of output: the process died or exited

    def _next(self, deadline):
        try:
            return self.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return "timeout"

    def _stderr_tail(self, n=8) -> str:
        self.stderr.seek(0)
        lines = [l.rstrip() for l in self.stderr.read().splitlines() if l.strip()]
        return " | ".join(lines[-n:])[-1200:]

    def run(self, case_id: str, timeout: float) -> dict:
        if not self.ready:
            event = self._next(time.monotonic() + START_TIMEOUT_S)
            if not isinstance(event, dict) or event.get("event") != "ready":
                return self._dead(case_id, "worker did not start", event)
            self.ready = True
        try:
            self.proc.stdin.write(case_id + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._dead(case_id, "worker pipe closed", None)
        deadline = time.monotonic() + timeout
        started = False
        while True:
            event = self._next(deadline)
            if not isinstance(event, dict):
                return self._dead(case_id, "in progress" if started else "before start", event)
            if event.get("id") != case_id:
                continue
            if event["event"] == "start":
                started = True
            elif event["event"] == "result":
                return event

    def _dead(self, case_id, when, event) -> dict:
        if event == "timeout":
            self.close()
            return {"id": case_id, "outcome": "hang", "detail": f"no result within the time limit ({when})"}
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.close()
            code = "?"
        return {"id": case_id, "outcome": "crash",
                "detail": f"worker died {when} (exit {code}): {self._stderr_tail()}"}

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # killed but not reaped: nothing more to wait for
            pass
        self.stderr.close()


def run_pool(case_ids, n_workers: int, case_timeout: float = CASE_TIMEOUT_S) -> tuple[dict, int]:
    """Run every case in n_workers workers; (results by id, workers started)."""
    todo: queue.Queue = queue.Queue()
    for cid in case_ids:
        todo.put(cid)
    results, started, lock = {}, [0], threading.Lock()

    def slot():
        worker = None
        while True:
            try:
                cid = todo.get_nowait()
            except queue.Empty:
                break
            if worker is None:
                worker = Worker()
                with lock:
                    started[0] += 1
            timeout = max(case_timeout, COMPILE_TIMEOUT_S) if "/compile" in cid else case_timeout
            result = worker.run(cid, timeout)
            if result["outcome"] in ("crash", "hang"):
                worker.close()
                worker = None
            with lock:
                results[cid] = result
        if worker is not None:
            try:
                worker.proc.stdin.close()
            except OSError:  # the worker already exited: its stdin is gone
                pass
            worker.close()

    threads = [threading.Thread(target=slot) for _ in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, started[0]


def _report_at_end(line: str) -> None:
    """Hand the summary to conftest.py's terminal-summary hook (shown even when the test passes)."""
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == str(HERE / "conftest.py") and hasattr(module, "SUMMARY"):
            module.SUMMARY.append(line)
            return


def format_failures(failures) -> str:
    """Failures grouped by op, then by mutation and outcome (the backends it happened on listed
    together), each with its detail and the call."""
    groups = collections.defaultdict(list)
    for r in failures:
        case, backend = r["id"].rsplit("/", 1)
        groups[(case.split("/", 1)[0], case, r["outcome"])].append((backend, r))
    lines, last_op = [], None
    for (op, case, outcome), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        if op != last_op:
            n = sum(len(v) for k, v in groups.items() if k[0] == op)
            lines.append(f"{op}: {n} failing case(s)")
            last_op = op
        backends = ",".join(b for b, _ in items)
        r = items[0][1]
        lines.append(f"  [{outcome}] {case} [{backends}]: {r.get('detail', '')}")
        lines.append(f"      {r.get('call', '')}")
    return "\n".join(lines)


def _cost(case_id: str) -> int:
    """Order: the slow cases first so that the 2 workers finish together."""
    if "/compile" in case_id:
        return 0
    return {"triton": 1, "cuda": 1, "cpu": 2}.get(case_id.rsplit("/", 1)[1], 3)


def test_fuzz_every_op():
    cases = _load_cases()
    only = [s for s in os.environ.get("PYFASTLAB_FUZZ_OPS", "").split(",") if s]
    ids = sorted(cases.case_ids(only or None), key=_cost)
    n_workers = int(os.environ.get("PYFASTLAB_FUZZ_WORKERS", "2"))
    print(f"\nfuzz: seed {cases.SEED} (PYFASTLAB_FUZZ_SEED), {len(ids)} cases, {n_workers} workers, "
          f"PYFASTLAB_CHECK={os.environ.get('PYFASTLAB_CHECK')} TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}")
    t0 = time.monotonic()
    results, n_started = run_pool(ids, n_workers)
    elapsed = time.monotonic() - t0

    for r in results.values():
        if "call" not in r:  # a crash or a hang: the worker could not say what it was running
            try:
                op, _, backend, sample = cases.build(r["id"])
                r["call"] = cases.call_text(op.name, sample, backend)
            except Exception as exc:
                r["call"] = f"(could not rebuild: {exc})"
    if os.environ.get("PYFASTLAB_FUZZ_RESULTS"):  # every result, one JSON object a line
        with open(os.environ["PYFASTLAB_FUZZ_RESULTS"], "w") as f:
            for cid in ids:
                if cid in results:
                    f.write(json.dumps(results[cid]) + "\n")

    counts = collections.Counter(r["outcome"] for r in results.values())
    silent = counts["mismatch"] + counts["no_error"]
    summary = (f"fuzz: {len(results)} cases tried in {elapsed:.1f} s ({n_started} worker processes): "
               f"{counts['clear_error']} clear errors, {counts['match']} matches, "
               f"{counts['ok']} ran (values not compared), {counts['crash']} crashes, {counts['hang']} hangs, "
               f"{silent} silent wrong results ({counts['mismatch']} mismatches, "
               f"{counts['no_error']} bad inputs accepted), {counts['wrong_error']} wrong exception types, "
               f"{counts['unnamed_error']} errors not naming the argument, "
               f"{counts['rejected_valid']} valid inputs rejected, {counts['mutated_input']} mutated inputs, "
               f"{counts['compile_failed']} compile failures, {counts['harness_error']} harness errors; "
               f"{counts['refused']} unusual valid inputs refused with a ValueError (allowed)")
    print(summary)
    _report_at_end(f"{summary} [seed {cases.SEED}]")
    refused = collections.defaultdict(list)
    for cid in ids:
        r = results.get(cid)
        if r and r["outcome"] == "refused":
            refused[(cid.rsplit("/", 1)[0], r["detail"])].append(cid.rsplit("/", 1)[1])
    for (case, detail), on in sorted(refused.items()):
        print(f"  refused {case} [{','.join(sorted(on))}]: {detail}")
    failures = [r for cid in ids if (r := results.get(cid)) and r["outcome"] in cases.FAILURES]
    report = format_failures(failures)
    if report:
        print(report)
    missing = [cid for cid in ids if cid not in results]
    assert not missing, f"{len(missing)} cases never ran, e.g. {missing[:5]}"
    assert not failures, f"{len(failures)} fuzz failures (seed {cases.SEED}), listed in the captured output"


def test_pool_isolates_crashes_and_hangs():
    """The harness itself: a worker that aborts or hangs costs only its case; the next case runs
    in a fresh worker (worker.py's selftest/* ids)."""
    ids = ["selftest/ok/1", "selftest/abort/1", "selftest/ok/2", "selftest/hang/1", "selftest/ok/3"]
    results, n_started = run_pool(ids, 1, case_timeout=5)
    assert [results[i]["outcome"] for i in ids] == ["ok", "crash", "ok", "hang", "ok"], results
    assert n_started == 3
