"""One rank of the 2-process MinibatchCKA test (run by test_minibatch_cka_distributed.py, not by pytest).

Usage: python minibatch_cka_worker.py RANK WORLD PORT OUT. Every rank builds the same batches and
updates on batches RANK::WORLD; results go to OUT (torch.save) for the test to compare.
"""
import datetime
import sys

import torch
import torch.distributed as dist

from pyfastlab.distill import MinibatchCKA


def batches(seed=0, n_batches=6, size=24):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        base = torch.randn(size, 3, generator=gen, dtype=torch.float64)
        xs = [base @ torch.randn(3, w, generator=gen, dtype=torch.float64) + torch.randn(size, w, generator=gen,
                                                                                         dtype=torch.float64)
              for w in (4, 6)]
        ys = [torch.cat([xs[0], torch.randn(size, 2, generator=gen, dtype=torch.float64)], 1),
              torch.randn(size, 5, generator=gen, dtype=torch.float64), base]
        out.append((xs, ys))
    return out


def main(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    result = {}
    try:
        metric = MinibatchCKA()
        for xs, ys in batches()[rank::world]:
            metric.update(xs, ys)
        local_before = metric.hsic_xy.clone()
        result["first"] = metric.compute()
        result["second"] = metric.compute()  # copies are reduced: no double counting
        result["local_untouched"] = torch.equal(local_before, metric.hsic_xy)

        lonely = MinibatchCKA()  # only rank 0 adds batches; the others contribute zeros
        if rank == 0:
            for xs, ys in batches():
                lonely.update(xs, ys)
        result["lonely"] = lonely.compute()

        mismatched = MinibatchCKA()
        xs, ys = batches()[0]
        mismatched.update(xs if rank == 0 else xs[:1], ys)
        try:
            mismatched.compute()
            result["mismatch_error"] = None
        except ValueError as error:
            result["mismatch_error"] = str(error)
    finally:
        dist.destroy_process_group()
    torch.save(result, out)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
