"""`make mutants`: the mutation gate of the op tests.

Applies each curated bug of mutants.toml (a unified diff under patches/) to a scratch copy of the
working tree, rebuilds the CPU extension when the bug is in C++, runs the op tests that should
catch it against that copy, and says whether they did:

    KILLED    <name>  (<seconds>s)  <what the bug breaks>
    ...
    mutants killed: K/N

Exit status 0 only when every mutant was killed. The main tree and the .venv install are never
touched: everything lives under build/mutants/

    src/     the working tree (git ls-files -co --exclude-standard), synced by content each run
    build/   a persistent CPU-only CMake + Ninja build of src/ (PFL_WITH_CUDA=OFF)
    site/    the importable package: src/pyfastlab + src/kernels as pyfastlab/kernels + _C*.so
    objects/ the baseline object files: a C++ mutant's objects are swapped back after it, so the
             revert costs a relink, never a recompile
    logs/    the build and pytest output of each mutant

Tests run from src/tests with PYTHONPATH=site, PYFASTLAB_CHECK=1 and TRITON_INTERPRET=1, with the
mutant_guard plugin (beside this file), which refuses to run unless pyfastlab and its _C come from
site/. The covering tests of every mutant run once on the unmutated build first; a red baseline
aborts the run.

    python tests/mutants/run.py                  # every mutant
    python tests/mutants/run.py NAME [NAME ...]  # some (names or substrings of names)
    python tests/mutants/run.py --list
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = ROOT / "build" / "mutants"
SRC, BUILD, SITE, OBJECTS, LOGS = (WORK / d for d in ("src", "build", "site", "objects", "logs"))
KINDS = ("cpp", "triton", "reference")
FAMILIES = ("continual", "distill", "mixup", "vae", "vidvrd")
JOBS = os.environ.get("PFL_MUTANTS_JOBS", "2")  # the machine's 2 cores are shared


@dataclass
class Mutant:
    name: str
    patch: Path
    family: str
    kind: str
    rebuild: bool
    what: str
    tests: list[str]
    k: str
    timeout: int
    files: list[str]  # paths the patch touches, relative to the repo root


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fail(msg: str) -> None:
    log(f"make mutants: {msg}")
    sys.exit(2)


# ---- the manifest ----------------------------------------------------------------------------------

def patched_files(patch: Path) -> list[str]:
    files = []
    for line in patch.read_text().splitlines():
        if line.startswith("+++ "):
            path = line[4:].split("\t")[0].strip()
            if not path.startswith("b/"):
                fail(f"{patch.name}: expected a/ b/ prefixes, got {line!r}")
            files.append(path[2:])
    if not files:
        fail(f"{patch.name}: not a unified diff")
    return files


def load_manifest() -> list[Mutant]:
    data = tomllib.loads((HERE / "mutants.toml").read_text())
    default_timeout = int(data.get("timeout", 300))
    mutants, seen = [], set()
    for entry in data["mutant"]:
        name = entry["name"]
        if name in seen:
            fail(f"mutants.toml: duplicate name {name}")
        seen.add(name)
        patch = HERE / entry["patch"]
        if not patch.is_file():
            fail(f"mutants.toml: {name}: no patch {patch}")
        if entry["kind"] not in KINDS or entry["family"] not in FAMILIES:
            fail(f"mutants.toml: {name}: kind must be one of {KINDS}, family one of {FAMILIES}")
        files = patched_files(patch)
        is_cpp = any(f.startswith("csrc/") or f == "CMakeLists.txt" for f in files)
        if bool(entry["rebuild"]) != is_cpp:
            fail(f"mutants.toml: {name}: rebuild = {entry['rebuild']} but the patch touches {files}")
        for t in entry["tests"]:
            if not (ROOT / "tests" / t).is_file():
                fail(f"mutants.toml: {name}: no test file tests/{t}")
        mutants.append(Mutant(name, patch, entry["family"], entry["kind"], bool(entry["rebuild"]), entry["what"],
                              list(entry["tests"]), entry.get("k", ""), int(entry.get("timeout", default_timeout)),
                              files))
    return mutants


# ---- the scratch tree ------------------------------------------------------------------------------

def write_if_changed(dst: Path, data: bytes) -> bool:
    """Writes dst only when its bytes differ (an unchanged file keeps its mtime: no rebuild)."""
    try:
        if dst.read_bytes() == data:
            return False
    except FileNotFoundError:
        dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".pfl-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)
    return True


def sync_tree(pairs: dict[Path, Path], dst_root: Path, keep=()) -> int:
    """Makes dst_root hold exactly the files of pairs (dst -> src), by content. Returns the number of
    files written. Paths with a part named in `keep` (and __pycache__) are left alone."""
    written = sum(write_if_changed(dst, src.read_bytes()) for dst, src in pairs.items())
    wanted = set(pairs)
    for path in sorted(dst_root.rglob("*"), reverse=True):
        rel = path.relative_to(dst_root)
        if "__pycache__" in rel.parts or any(part in keep for part in rel.parts):
            continue
        if path.is_file() and path not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return written


def sync_src() -> int:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    pairs = {SRC / rel: ROOT / rel for rel in listed if rel and (ROOT / rel).is_file()}
    SRC.mkdir(parents=True, exist_ok=True)
    return sync_tree(pairs, SRC, keep=(".hypothesis",))


def extension(directory: Path) -> Path | None:
    found = sorted(directory.glob("_C*.so"))
    return found[0] if found else None


def sync_site(so: Path) -> None:
    """site/pyfastlab = src/pyfastlab + src/kernels as pyfastlab/kernels + the given _C*.so."""
    pkg = SITE / "pyfastlab"
    pairs = {}
    for sub, dst in ((SRC / "pyfastlab", pkg), (SRC / "kernels", pkg / "kernels")):
        for path in sub.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".so":
                pairs[dst / path.relative_to(sub)] = path
    pairs[pkg / so.name] = so
    SITE.mkdir(parents=True, exist_ok=True)
    sync_tree(pairs, SITE)
    shutil.rmtree(pkg / "__pycache__", ignore_errors=True)
    for cache in pkg.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


# ---- the build -------------------------------------------------------------------------------------

def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        fail(f"{name} not found (make env installs it into .venv)")
    return found


def configure() -> None:
    cache = BUILD / "CMakeCache.txt"
    if (BUILD / "build.ninja").is_file() and cache.is_file() and f"={sys.executable}\n" in cache.read_text():
        return
    import torch.utils  # the venv's torch: its cmake prefix, and the Python that CMake asks about torch
    BUILD.mkdir(parents=True, exist_ok=True)
    cmd = [tool("cmake"), "-G", "Ninja", "-S", str(SRC), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release",
           "-DPFL_WITH_CUDA=OFF", f"-DPython_EXECUTABLE={sys.executable}",
           f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DCMAKE_MAKE_PROGRAM={tool('ninja')}"]
    out = LOGS / "configure.log"
    with out.open("w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            fail(f"cmake configure failed:\n{tail(out)}")


def ninja(logfile: Path) -> bool:
    with logfile.open("w") as f:
        return subprocess.run([tool("ninja"), "-C", str(BUILD), "-j", JOBS], stdout=f,
                              stderr=subprocess.STDOUT).returncode == 0


def object_files() -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (BUILD / "CMakeFiles").rglob("*.o")}


def snapshot_objects() -> None:
    """Keeps the baseline objects (and the baseline extension) for the reverts."""
    pairs = {OBJECTS / p.relative_to(BUILD): p for p in object_files()}
    so = extension(BUILD)
    pairs[OBJECTS / so.name] = so
    OBJECTS.mkdir(parents=True, exist_ok=True)
    sync_tree(pairs, OBJECTS)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


# ---- the tests -------------------------------------------------------------------------------------

def selection(mutants: list[Mutant]) -> tuple[list[str], str]:
    """Test files and one -k expression for the covering tests of the mutants (a module name is a
    keyword of its tests, so `test_x.py and (k)` keeps k to that file)."""
    files, terms = [], []
    for m in mutants:
        for t in m.tests:
            if t not in files:
                files.append(t)
            term = f"{Path(t).name} and ({m.k})" if m.k else Path(t).name
            if term not in terms:
                terms.append(term)
    return files, " or ".join(f"({t})" for t in terms)


def pytest(mutants: list[Mutant], logfile: Path, timeout: int) -> tuple[str, float]:
    """('passed' | 'failed' | 'timeout' | 'error: ...', seconds) of the covering tests of mutants."""
    files, k = selection(mutants)
    env = dict(os.environ)
    env.update(PYFASTLAB_CHECK="1", TRITON_INTERPRET="1", PYTHONDONTWRITEBYTECODE="1",
               PFL_MUTANTS_SITE=str(SITE),
               PYTHONPATH=os.pathsep.join([str(SITE), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                    else [])))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "mutant_guard",
           "-k", k, *files]
    start = time.monotonic()
    with logfile.open("w") as f:
        f.write(f"$ cd {SRC / 'tests'} && {' '.join(cmd)}\n\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=SRC / "tests", env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", time.monotonic() - start
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    seconds = time.monotonic() - start
    if rc == 0:
        return "passed", seconds
    if rc == 1 or rc < 0:  # test failures, or a crash (a signal) in the code under test
        return "failed", seconds
    why = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests selected"}.get(rc, f"exit {rc}")
    return f"error: pytest {why}", seconds


# ---- one mutant ------------------------------------------------------------------------------------

def git_apply(patch: Path, *extra: str) -> subprocess.CompletedProcess:
    # GIT_CEILING_DIRECTORIES: src/ lies inside the main repository, which git must not find (a
    # patch applied there would be applied to the main tree).
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(WORK))
    return subprocess.run(["git", "apply", *extra, str(patch)], cwd=SRC, env=env, capture_output=True, text=True)


def revert(originals: dict, before: dict[Path, int]) -> None:
    """Puts back the original bytes and mtime of each patched file, and the baseline bytes of each
    object the mutant rebuilt, under the rebuilt object's mtime: ninja then finds the objects clean
    (their sources are older than the recorded outputs, and the stored deps are not out of date)
    and only relinks, since the extension is removed. No recompile to undo a mutant."""
    for f, (data, st) in originals.items():
        (SRC / f).write_bytes(data)
        os.utime(SRC / f, ns=(st.st_atime_ns, st.st_mtime_ns))
    rebuilt = [obj for obj, mtime in object_files().items() if before.get(obj) != mtime]
    for obj in rebuilt:
        mtime = obj.stat().st_mtime_ns
        shutil.copyfile(OBJECTS / obj.relative_to(BUILD), obj)
        os.utime(obj, ns=(mtime, mtime))
    so = extension(BUILD)
    if rebuilt and so is not None:
        so.unlink()


def run_mutant(m: Mutant, baseline_so: Path) -> tuple[str, float, str]:
    """(status, seconds, note) with status KILLED, SURVIVED or ERROR."""
    start = time.monotonic()
    originals = {f: ((SRC / f).read_bytes(), (SRC / f).stat()) for f in m.files}
    check = git_apply(m.patch, "--check")
    if check.returncode != 0:
        return "ERROR", time.monotonic() - start, f"patch does not apply: {check.stderr.strip().splitlines()[-1]}"
    before = object_files()
    try:
        applied = git_apply(m.patch)
        if applied.returncode != 0:
            return "ERROR", time.monotonic() - start, f"git apply failed: {applied.stderr.strip()}"
        so = baseline_so
        if m.rebuild:
            build_log = LOGS / f"{m.name}.build.log"
            if not ninja(build_log):
                return "ERROR", time.monotonic() - start, f"the mutant does not build (see {build_log})"
            so = extension(BUILD)
        sync_site(so)
        outcome, _ = pytest([m], LOGS / f"{m.name}.log", m.timeout)
    finally:
        revert(originals, before)
    seconds = time.monotonic() - start
    if outcome == "failed":
        return "KILLED", seconds, ""
    if outcome == "timeout":
        return "KILLED", seconds, f"[timeout after {m.timeout}s]"
    if outcome == "passed":
        return "SURVIVED", seconds, ""
    return "ERROR", seconds, f"[{outcome}, see {LOGS / (m.name + '.log')}]"


# ---- main ------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only the mutants whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()

    mutants = load_manifest()
    if args.names:
        mutants = [m for m in mutants if any(n in m.name for n in args.names)]
        if not mutants:
            fail(f"no mutant matches {args.names}")
    if args.list:
        for m in mutants:
            print(f"{m.name:<46} {m.kind:<9} {', '.join(m.files)}\n    {m.what}\n    tests/{' '.join(m.tests)} -k "
                  f"{m.k!r}")
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    lock = (WORK / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fail("another `make mutants` is running on this tree (build/mutants/.lock)")
    LOGS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    written = sync_src()
    configure()
    log(f"mutants: building the unmutated CPU extension in {BUILD.relative_to(ROOT)} "
        f"({written} files changed since the last run)")
    if not ninja(LOGS / "baseline.build.log"):
        fail(f"the unmutated tree does not build:\n{tail(LOGS / 'baseline.build.log')}")
    snapshot_objects()
    baseline_so = OBJECTS / extension(BUILD).name
    sync_site(baseline_so)

    log(f"mutants: baseline: the covering tests of {len(mutants)} mutants on the unmutated build")
    outcome, seconds = pytest(mutants, LOGS / "baseline.log", sum(m.timeout for m in mutants))
    if outcome != "passed":
        log(tail(LOGS / "baseline.log"))
        fail(f"the baseline is not green ({outcome}, {seconds:.0f}s, log: {LOGS / 'baseline.log'}): "
             "fix the tests or the tree first")
    log(f"mutants: baseline green ({seconds:.0f}s, {time.monotonic() - t0:.0f}s so far)")

    killed = 0
    for m in mutants:
        status, seconds, note = run_mutant(m, baseline_so)
        killed += status == "KILLED"
        print(f"{status:<8}  {m.name:<44}  ({seconds:5.1f}s)  {m.what}" + (f"  {note}" if note else ""), flush=True)
    sync_site(baseline_so)
    consistent = True
    # The reverts must leave the baseline: relinking the restored objects gives its extension again.
    if not ninja(LOGS / "final.build.log") or sha(extension(BUILD)) != sha(baseline_so):
        log("mutants: warning: after the reverts the build does not give the baseline extension back "
            f"(see {LOGS / 'final.build.log'}); remove {BUILD.relative_to(ROOT)} to start afresh")
        consistent = False
    log(f"mutants: {time.monotonic() - t0:.0f}s in all; logs in {LOGS.relative_to(ROOT)}")
    print(f"mutants killed: {killed}/{len(mutants)}", flush=True)
    return 0 if killed == len(mutants) and consistent else 1


if __name__ == "__main__":
    sys.exit(main())
