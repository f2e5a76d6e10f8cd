"""MinibatchCKA.compute() all-reduces over torch.distributed: 2 gloo processes on loopback give the
single-process result on all the batches. Processes are spawned with a free port and a hard timeout."""
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from pyfastlab.distill import MinibatchCKA

WORKER = pathlib.Path(__file__).with_name("minibatch_cka_worker.py")
WORLD = 2
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_worker():
    """The worker's batch builder, imported from its file (tests run with --import-mode=importlib)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("minibatch_cka_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    port = free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(rank), str(WORLD), str(port), str(out / f"{rank}.pt")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rank in range(WORLD)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {WORLD} gloo workers did not finish within {TIMEOUT_S} s")
    finally:
        for proc in procs:  # never leave a worker behind (this test's own children only)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{log}"
    return [torch.load(out / f"{rank}.pt") for rank in range(WORLD)]


def test_two_ranks_equal_one_process_on_all_batches(rank_results):
    single = MinibatchCKA()
    for xs, ys in load_worker().batches():
        single.update(xs, ys)
    expected = single.compute()
    for result in rank_results:
        torch.testing.assert_close(result["first"], expected, atol=1e-13, rtol=1e-12)
        assert torch.equal(result["first"], result["second"])
        assert result["local_untouched"]
        torch.testing.assert_close(result["lonely"], expected, atol=1e-13, rtol=1e-12)


def test_mismatched_layer_counts_raise_on_every_rank(rank_results):
    for result in rank_results:
        assert result["mismatch_error"] is not None
        assert "mismatched layer counts" in result["mismatch_error"]
        assert "rank 0: (2, 3)" in result["mismatch_error"] and "rank 1: (1, 3)" in result["mismatch_error"]
