"""GeneralMaskedCrossEntropy: each policy's mask against a hand-written expectation, the loss it
feeds the op, and bad input."""
import pytest
import torch
import torch.nn.functional as F

from helpers import devices
from pyfastlab import ops
from pyfastlab.continual import GeneralMaskedCrossEntropy

T, F_ = True, False
IGNORE = -100


def gms(policy, **kwargs):
    return GeneralMaskedCrossEntropy(policy=policy, num_classes=6, classes_per_task=2, **kwargs)


def started(module, tasks):
    for t in range(tasks):
        module.begin_task(t)
    return module


def test_current_task_masks_stream_rows_to_the_task_and_leaves_replay_rows_open():
    m = started(gms("current_task"), 2)
    logits, target = torch.randn(3, 6), torch.tensor([2, 3, 0])
    active, groups = m.mask_for(logits, target)
    assert active.tolist() == [F_, F_, T, T, F_, F_] and groups is None
    active, groups = m.mask_for(logits, target, is_replay=torch.tensor([F_, F_, T]))
    assert active.tolist() == [[F_, F_, T, T, F_, F_]] and groups.tolist() == [0, 0, -1]
    masked = gms("current_task", mask_replay=True)
    started(masked, 2)
    active, groups = masked.mask_for(logits, target, is_replay=torch.tensor([F_, F_, T]))
    assert active.tolist() == [F_, F_, T, T, F_, F_] and groups is None


def test_seen_grows_with_every_task():
    m = gms("seen")
    m.begin_task(0)
    assert m.mask_for(torch.randn(1, 6), torch.tensor([0]))[0].tolist() == [T, T, F_, F_, F_, F_]
    m.begin_task(1)
    assert m.mask_for(torch.randn(1, 6), torch.tensor([0]))[0].tolist() == [T, T, T, T, F_, F_]
    m.begin_task(0, classes=[5])  # explicit classes are added too
    assert m.mask_for(torch.randn(1, 6), torch.tensor([0]))[0].tolist() == [T, T, T, T, F_, T]


def test_own_task_uses_each_rows_task():
    m = started(gms("own_task"), 1)
    target = torch.tensor([0, 3, 5, IGNORE, 2])
    active, groups = m.mask_for(torch.randn(5, 6), target, is_replay=torch.tensor([F_, F_, F_, F_, T]))
    assert active.tolist() == [[T, T, F_, F_, F_, F_], [F_, F_, T, T, F_, F_], [F_, F_, F_, F_, T, T]]
    assert groups.tolist() == [0, 1, 2, -1, -1]  # ignored and replayed rows: group -1
    _, groups = m.mask_for(torch.randn(5, 6), target, task_ids=torch.tensor([2, 2, 0, 1, 1]))
    assert groups.tolist() == [2, 2, 0, 1, 1]
    lists = GeneralMaskedCrossEntropy(policy="own_task", num_classes=4, classes_per_task=[[3, 0], [1, 2]])
    lists.begin_task(0)
    active, groups = lists.mask_for(torch.randn(2, 4), torch.tensor([0, 2]))
    assert active.tolist() == [[T, F_, F_, T], [F_, T, T, F_]] and groups.tolist() == [0, 1]


@pytest.mark.parametrize("include_unseen,expected", [(True, [F_, F_, T, F_, T, T]), (False, [F_, F_, T, F_, F_, F_])])
def test_batch_present_is_the_stream_batchs_classes_from_the_second_task(include_unseen, expected):
    m = gms("batch_present", ace_include_unseen=include_unseen)
    target = torch.tensor([2, 2, IGNORE, 1])  # the last row is replayed: its class does not count
    is_replay = torch.tensor([F_, F_, F_, T])
    m.begin_task(0)
    assert m.mask_for(torch.randn(4, 6), target, is_replay=is_replay) == (None, None)
    m.begin_task(1)
    active, groups = m.mask_for(torch.randn(4, 6), target, is_replay=is_replay)
    assert active.tolist() == [expected] and groups.tolist() == [0, 0, 0, -1]


def test_none_is_plain_cross_entropy():
    m = GeneralMaskedCrossEntropy(policy="none")
    logits, target = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 5, 2, IGNORE])
    assert m.mask_for(logits, target) == (None, None)
    torch.testing.assert_close(m(logits, target), F.cross_entropy(logits, target))


@pytest.mark.parametrize("mode,kwargs", [("const", dict(mask_value=0.0)), ("detach", dict(offset=-1.0))])
def test_forward_is_the_op_on_the_built_mask(mode, kwargs):
    m = started(gms("current_task", mode=mode, old_grad_scale=0.5, new_grad_scale=2.0, **kwargs), 2)
    logits = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    target, is_replay = torch.tensor([2, 3, 3, 0, 5]), torch.tensor([F_, F_, F_, T, T])
    loss = m(logits, target, is_replay=is_replay)
    row_mask = torch.tensor([[F_, F_, T, T, F_, F_]] * 3 + [[T] * 6] * 2)
    expected = ops.masked_cross_entropy(logits, target, row_mask, mode=mode, old_grad_scale=0.5, new_grad_scale=2.0,
                                        backend="reference", **kwargs)
    torch.testing.assert_close(loss, expected)
    (g,) = torch.autograd.grad(loss, logits)
    (g_expected,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(g, g_expected)


def test_masks_are_module_buffers():
    """They move with .to() and are saved with the model's state_dict."""
    m = started(gms("own_task"), 1)
    state = m.state_dict()
    assert set(state) == {"current", "seen", "task_table", "class_task"}


@pytest.mark.parametrize("kwargs,name", [
    (dict(policy="task"), "policy"), (dict(policy="own_task", num_classes=6), "classes_per_task"),
    (dict(policy="seen"), "num_classes"), (dict(policy="none", mode="hard"), "mode"),
    (dict(policy="none", reduction="avg"), "reduction"), (dict(policy="none", offset=float("nan")), "offset"),
    (dict(policy="own_task", num_classes=4, classes_per_task=[[0, 1], [1, 2]]), "more than one task"),
    (dict(policy="own_task", num_classes=4, classes_per_task=[[0, 9]]), "classes_per_task"),
])
def test_bad_construction_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GeneralMaskedCrossEntropy(**kwargs)


def test_bad_calls_name_the_argument():
    m = gms("current_task")
    with pytest.raises(RuntimeError, match="begin_task"):
        m(torch.randn(2, 6), torch.tensor([0, 1]))
    m.begin_task(0)
    with pytest.raises(ValueError, match="target"):  # a label outside the head
        m(torch.randn(2, 6), torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="num_classes"):
        m(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="is_replay"):
        m(torch.randn(2, 6), torch.tensor([0, 1]), is_replay=torch.tensor([True]))
    with pytest.raises(ValueError, match="classes"):
        m.begin_task(1, classes=[7])
    with pytest.raises(ValueError, match="t="):
        m.begin_task(3)
    own = started(gms("own_task"), 1)
    with pytest.raises(ValueError, match="target"):
        own(torch.randn(2, 6), torch.tensor([0, 9]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("policy", ["current_task", "own_task", "seen", "batch_present"])
def test_no_host_sync_per_step(policy, monkeypatch):
    monkeypatch.setenv("PYFASTLAB_CHECK", "0")  # the device-flag check syncs by design
    m = started(gms(policy), 2).cuda()
    logits = torch.randn(8, 6, device="cuda", requires_grad=True)
    target = torch.tensor([2, 3, 2, 3, 0, 1, 4, 5], device="cuda")
    is_replay = torch.arange(8, device="cuda") >= 4
    m(logits, target, is_replay=is_replay).backward()  # warm-up: allocations, kernel loads
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        m(logits, target, is_replay=is_replay).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", devices())
def test_module_moves_its_masks_to_the_logits(device):
    m = started(gms("current_task"), 1)
    loss = m(torch.randn(2, 6, device=device), torch.tensor([0, 1], device=device))
    assert m.current.device.type == device.type and torch.isfinite(loss)


@pytest.mark.parametrize("bad", [-1, 3, 7])
def test_own_task_rejects_task_ids_outside_the_configured_tasks(bad):
    m = started(gms("own_task"), 1)  # classes_per_task=2 over 6 classes: tasks 0, 1, 2
    logits, target = torch.randn(3, 6), torch.tensor([0, 2, 4])
    task_ids = torch.tensor([0, bad, 2])
    for kwargs in ({}, dict(is_replay=torch.tensor([F_, F_, T])), dict(is_replay=torch.tensor([F_, T, F_]))):
        with pytest.raises(ValueError, match=rf"task_ids\[1\] = {bad} is out of range: expected \[0, 3\)"):
            m.mask_for(logits, target, task_ids=task_ids, **kwargs)
        with pytest.raises(ValueError, match=r"task_ids\[1\] = -?\d+ is out of range: expected \[0, 3\)"):
            m(logits, target, task_ids=task_ids, **kwargs)
    # valid ids: replayed rows still take the all-active group
    _, groups = m.mask_for(logits, target, task_ids=torch.tensor([0, 1, 2]), is_replay=torch.tensor([F_, T, F_]))
    assert groups.tolist() == [0, -1, 2]
