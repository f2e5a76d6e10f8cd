"""The three continual ops on a toy replay step, checked against the pure-PyTorch reference.

A linear classifier over 10 classes in 5 tasks of 2 classes sees a batch of the current task
(stream rows, masked to that task's classes) and a replay batch (row_group -1: unmasked). It
takes one SGD step with the general masked cross-entropy, then crafts PGD examples with the
fused step. Run: python examples/quickstart_continual_ops.py
"""
import torch

from pyfastlab import ops
from pyfastlab.reference import continual as reference


def main() -> None:
    torch.manual_seed(0)
    n_classes, n_tasks, dim = 10, 5, 64
    model = torch.nn.Linear(dim, n_classes)
    task_classes = torch.arange(n_classes).view(n_tasks, -1)           # task t owns classes 2t, 2t+1
    active = torch.zeros(n_tasks, n_classes, dtype=torch.bool)
    active[torch.arange(n_tasks)[:, None], task_classes] = True           # [G = 5, C = 10] mask table

    task = 3
    x_stream = torch.rand(10, dim)
    y_stream = task_classes[task][torch.randint(0, 2, (10,))]
    x_replay = torch.rand(10, dim)
    y_replay = torch.randint(0, 2 * task, (10,))                          # earlier tasks' classes
    x = torch.cat([x_stream, x_replay])
    y = torch.cat([y_stream, y_replay])
    row_group = torch.cat([torch.full((10,), task), torch.full((10,), -1)])

    logits = model(x)
    loss = ops.masked_cross_entropy(logits, y, active, row_group)         # const -inf on old classes
    want = reference.masked_cross_entropy(logits, y, active, row_group)
    print(f"masked cross-entropy: {loss.item():.6f} (reference {want.item():.6f})")
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad

    probs = ops.masked_softmax(model(x), active, row_group, mode="detach", offset=-1.0)
    print(f"masked softmax rows sum to 1: {torch.allclose(probs.sum(1), torch.ones(20))}")

    # PGD L-inf, 7 steps of 0.025 inside an eps = 0.1 ball, through the input gradient only.
    x_adv = x.clone()
    for _ in range(7):
        x_req = x_adv.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x_req), y, reduction="sum"), x_req)
        ops.pgd_linf_step_(x_adv, grad, x, eps=0.1, step_size=0.025)
    print(f"PGD: max |x_adv - x| = {(x_adv - x).abs().max().item():.3f} (eps 0.1), "
          f"clean loss {torch.nn.functional.cross_entropy(model(x), y).item():.3f} -> "
          f"adversarial {torch.nn.functional.cross_entropy(model(x_adv), y).item():.3f}")
    assert torch.allclose(loss, want, atol=1e-5)


if __name__ == "__main__":
    main()
