"""ER, ER-ACE, DER and DER++ against their formulas written with torch.nn.functional."""
import pytest
import torch
import torch.nn.functional as F

from pyfastlab.continual import DERLoss, DERPPLoss, ERACELoss, ERLoss, GeneralMaskedCrossEntropy

C = 6


def batch(n, seed, classes=range(C)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, generator=gen, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor(list(classes))
    return logits, classes[torch.randint(len(classes), (n,), generator=gen)]


def masked(logits, allowed):
    """The stream rows' logits with the classes outside `allowed` at -inf."""
    keep = torch.zeros(C, dtype=torch.bool)
    keep[list(allowed)] = True
    return logits.masked_fill(~keep, float("-inf"))


def current_task_gms(t=1):
    gms = GeneralMaskedCrossEntropy(policy="current_task", num_classes=C, classes_per_task=2)
    gms.begin_task(t)
    return gms


def test_er_without_masking_is_cross_entropy_and_sum_is_twice_concat_for_equal_batches():
    zs, ys = batch(5, 0)
    zb, yb = batch(5, 1)
    concat = ERLoss()(zs, ys, zb, yb)
    torch.testing.assert_close(concat, F.cross_entropy(torch.cat([zs, zb]), torch.cat([ys, yb])))
    torch.testing.assert_close(ERLoss(combine="sum")(zs, ys, zb, yb), 2 * concat)
    torch.testing.assert_close(ERLoss()(zs, ys), F.cross_entropy(zs, ys))


@pytest.mark.parametrize("combine", ["concat", "sum"])
def test_er_with_gms_masks_stream_rows_only(combine):
    zs, ys = batch(4, 2, classes=(2, 3))
    zb, yb = batch(3, 3, classes=(0, 1))
    loss = ERLoss(current_task_gms(), combine=combine)(zs, ys, zb, yb)
    if combine == "concat":
        expected = F.cross_entropy(torch.cat([masked(zs, (2, 3)), zb]), torch.cat([ys, yb]))
    else:
        expected = F.cross_entropy(masked(zs, (2, 3)), ys) + F.cross_entropy(zb, yb)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, (zs, zb)), torch.autograd.grad(expected, (zs, zb)))


@pytest.mark.parametrize("average", [False, True])
def test_er_ace_masks_stream_rows_to_present_and_unseen_classes_from_the_second_task(average):
    loss_fn = ERACELoss(num_classes=C, classes_per_task=2, average=average)
    zs, ys = batch(4, 4, classes=(2,))  # task 1 owns 2 and 3; only 2 is in the batch
    zb, yb = batch(3, 5, classes=(0, 1))
    loss_fn.begin_task(0)
    first = loss_fn(zs, ys, zb, yb)
    torch.testing.assert_close(first, (F.cross_entropy(zs, ys) + F.cross_entropy(zb, yb)) / (2 if average else 1))
    loss_fn.begin_task(1)
    loss = loss_fn(zs, ys, zb, yb)
    expected = F.cross_entropy(masked(zs, (2, 4, 5)), ys) + F.cross_entropy(zb, yb)  # 4, 5 unseen
    torch.testing.assert_close(loss, expected / (2 if average else 1))


def mammoth_step(logits, labels, seen_so_far, task, buffer_logits, buffer_labels):
    """Our restatement of aimagelab/mammoth models/er_ace.py observe(): (loss, seen_so_far). The
    labels seen so far grow by the batch's; the batch's classes and every class from the largest
    seen label on (itself included) stay open; masking (fill -1e9) and replay from the second task."""
    seen_so_far = torch.cat([seen_so_far, labels]).unique()
    keep = torch.zeros(C, dtype=torch.bool)
    keep[labels] = True
    keep[int(seen_so_far.max()):] = True
    if task == 0:
        return F.cross_entropy(logits, labels), seen_so_far
    masked_ce = F.cross_entropy(logits.masked_fill(~keep, -1e9), labels)
    return masked_ce + F.cross_entropy(buffer_logits, buffer_labels), seen_so_far


def test_er_ace_mammoth_rule_matches_a_restatement_of_mammoth_over_a_stream():
    loss_fn = ERACELoss(num_classes=C, mask_rule="mammoth", mask_value=-1e9)  # begin_task needs no classes
    paper = ERACELoss(num_classes=C, classes_per_task=2)
    seen_so_far = torch.zeros(0, dtype=torch.long)
    # (task, stream labels, classes "paper" keeps). The rules differ where the largest seen label is
    # absent from the batch (3 at step 4) and where a current-task class is still unseen (3, then 5).
    stream = [(0, [0, 1, 1], None), (0, [0, 0, 1], None), (1, [2, 2, 2], (2, 4, 5)), (1, [3, 2, 3], (2, 3, 4, 5)),
              (1, [2, 2], (2, 4, 5)), (2, [4, 4, 4], (4,)), (2, [5, 4], (4, 5))]
    differs = 0
    for step, (task, labels, paper_keeps) in enumerate(stream):
        if step == 0 or task != stream[step - 1][0]:
            loss_fn.begin_task(task)
            paper.begin_task(task)
        zs, _ = batch(len(labels), 20 + step)
        zb, yb = batch(3, 40 + step, classes=range(2 * task or 2))
        ys = torch.tensor(labels)
        expected, seen_so_far = mammoth_step(zs, ys, seen_so_far, task, zb, yb)
        got = loss_fn(zs, ys, zb, yb) if task else loss_fn(zs, ys)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(torch.autograd.grad(got, zs), torch.autograd.grad(expected, zs))
        if task:
            paper_loss = paper(zs, ys, zb, yb)
            paper_expected = F.cross_entropy(masked(zs, paper_keeps), ys) + F.cross_entropy(zb, yb)
            torch.testing.assert_close(paper_loss, paper_expected)
            differs += not torch.allclose(paper_loss, got)
    assert differs == 3  # steps 2, 4 and 5
    assert loss_fn.gms.labels_seen.tolist() == [True] * C and "labels_seen" not in paper.state_dict()
    with pytest.raises(ValueError, match="mask_rule"):
        ERACELoss(num_classes=C, mask_rule="avalanche")
    with pytest.raises(ValueError, match="ace_include_unseen=True"):
        ERACELoss(num_classes=C, mask_rule="mammoth", ace_include_unseen=False)


def test_der_adds_alpha_times_logit_mse_with_its_gradient():
    zs, ys = batch(4, 6)
    zb, _ = batch(3, 7)
    stored = torch.randn(3, C).float()  # the buffer keeps float32
    loss = DERLoss(alpha=0.3)(zs, ys, zb, stored)
    torch.testing.assert_close(loss, F.cross_entropy(zs, ys) + 0.3 * ((zb - stored.double()) ** 2).mean())
    (grad,) = torch.autograd.grad(loss, zb)
    torch.testing.assert_close(grad, 2 * 0.3 * (zb - stored.double()).detach() / zb.numel())


def test_der_plus_plus_adds_beta_times_cross_entropy_of_a_second_draw():
    zs, ys = batch(4, 8, classes=(2, 3))
    zb, _ = batch(3, 9)
    zb2, yb2 = batch(3, 10)
    stored = torch.randn(3, C, dtype=torch.float64)
    gms = current_task_gms()
    loss = DERPPLoss(alpha=0.1, beta=0.5, gms=gms)(zs, ys, zb, stored, zb2, yb2)
    expected = (F.cross_entropy(masked(zs, (2, 3)), ys) + 0.1 * F.mse_loss(zb, stored)
                + 0.5 * F.cross_entropy(zb2, yb2))
    torch.testing.assert_close(loss, expected)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="combine"):
        ERLoss(combine="mean")
    with pytest.raises(ValueError, match="alpha"):
        DERLoss(alpha=float("nan"))
    with pytest.raises(ValueError, match="buffer_target"):
        ERLoss()(*batch(2, 0), batch(2, 1)[0])
    with pytest.raises(ValueError, match="stored_logits"):
        DERLoss()(*batch(2, 0), batch(2, 1)[0], torch.zeros(2, C + 1))
