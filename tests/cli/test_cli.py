"""The `pyfastlab` command: info, check, bench --quick, demo."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest


def pyfastlab(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pyfastlab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=None)


def test_info_json():
    proc = pyfastlab("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["pyfastlab"] and "masked_cross_entropy" in info["backends"]


def test_check_passes_every_backend():
    proc = pyfastlab("check", "--seed", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout
    assert "FAIL" not in proc.stdout


@pytest.mark.slow
def test_bench_quick_writes_results(tmp_path):
    proc = pyfastlab("bench", "--quick", "--op", "pgd_linf_step_", "--rounds", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = tmp_path.iterdir()
    data = json.loads((run_dir / "bench.json").read_text())
    names = {r["implementation"] for r in data["results"]}
    assert {"eager", "compiled", "cpu"} <= names
    assert all(r["error"] is None for r in data["results"])
    assert (run_dir / "bench.md").read_text().count("pgd_linf_step_") == len(data["results"])
    assert (run_dir / "speedup.png").stat().st_size > 1000


@pytest.mark.slow
def test_bench_prints_one_line_per_op_in_80_columns_without_log_noise(tmp_path):
    proc = pyfastlab("bench", "--quick", "--family", "continual", "--rounds", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    for noise in ("USDT", "profiler_start", "gpuGetDeviceCount", "No CUDA runtime", "Warning"):
        assert noise not in output
    ops = ("masked_cross_entropy", "masked_softmax", "pgd_linf_step_")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(ops)]
    assert len(lines) == len(ops), proc.stdout  # the default run: one case per op
    assert all(len(line) <= 80 for line in lines)
    assert all(" cpu " in line and "x " in line for line in lines)  # best backend and a ratio with its range


def test_bench_needs_no_pytest(tmp_path):
    """`pyfastlab bench` is the main job of an installed package: it must not import pytest (a test
    extra) for its cases. A sitecustomize that blocks the import stands in for a bare environment."""
    (tmp_path / "sitecustomize.py").write_text(
        "import builtins\n_import = builtins.__import__\n"
        "def _no_pytest(name, *args, **kwargs):\n"
        "    if name == 'pytest' or name.startswith('pytest.') or name.startswith('_pytest'):\n"
        "        raise ImportError('pytest is blocked for this test')\n"
        "    return _import(name, *args, **kwargs)\n"
        "builtins.__import__ = _no_pytest\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "pyfastlab.cli", "bench", "--quick", "--op", "temporal_iou",
                           "--rounds", "1", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "temporal_iou" in proc.stdout


def test_missing_compiled_kernels_warn_and_fail_check(tmp_path):
    """A package whose compiled library does not load (here: a copy without it, as when Python runs
    from the source tree) warns once at import with the reason and the fix, and `pyfastlab check`
    fails unless --allow-reference."""
    import pyfastlab

    shutil.copytree(pathlib.Path(pyfastlab.__file__).parent, tmp_path / "pyfastlab",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run = lambda *args: subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                                       env=env, cwd=tmp_path)
    proc = run("-c", "import pyfastlab, torch; x = torch.randn(3, 4); "
                     "pyfastlab.ops.masked_cross_entropy(x, torch.tensor([0, 1, 2])); print(pyfastlab.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path) in proc.stdout  # the copy was imported, not the installed package
    assert proc.stderr.count("the compiled kernels did not load") == 1, proc.stderr
    assert "reinstall pyfastlab" in proc.stderr and "reference" in proc.stderr
    proc = run("-m", "pyfastlab.cli", "check", "--seed", "1")
    assert proc.returncode == 1 and "did not load" in proc.stdout, proc.stdout + proc.stderr
    proc = run("-m", "pyfastlab.cli", "check", "--seed", "1", "--allow-reference")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_demo_of_unknown_family_fails_clearly():
    proc = pyfastlab("demo", "nosuchfamily")
    assert proc.returncode == 2
    assert "no demo" in proc.stdout


def test_bad_command_exits_non_zero():
    assert pyfastlab("frobnicate").returncode != 0


def test_demo_continual_is_registered_and_documents_its_options():
    proc = pyfastlab("demo", "continual", "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--quick" in proc.stdout and "--buffer" in proc.stdout


def test_demo_distill_is_registered_and_documents_its_options():
    proc = pyfastlab("demo", "distill", "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--quick" in proc.stdout and "--check" in proc.stdout and "--seeds" in proc.stdout


def test_demo_vidvrd_is_registered_and_documents_its_options():
    proc = pyfastlab("demo", "vidvrd", "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--quick" in proc.stdout and "--epochs" in proc.stdout
