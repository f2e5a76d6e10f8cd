"""ReplayBuffer: reservoir uniformity (a chi-square test that a flawed reservoir fails), storage,
sampling, checkpoints, task-balanced memory and bad input."""
import io

import pytest
import torch

from helpers import devices
from pyfastlab.continual import ReplayBuffer
from pyfastlab.continual.buffer import BufferSample

N_ITEMS, CAPACITY, RUNS = 50, 10, 2000
BATCHES = [7, 1, 12, 3, 9, 18]  # uneven batches: slot collisions inside a batch happen


def chi2_threshold(dof: int, z: float = 3.719) -> float:
    """Wilson-Hilferty quantile of chi-square(dof); z = 3.719 is the normal 0.9999 quantile."""
    c = 2 / (9 * dof)
    return dof * (1 - c + z * c ** 0.5) ** 3


def inclusion_statistic(stream_into_buffer) -> float:
    """Chi-square of how often each of N_ITEMS stream items ends in the buffer over RUNS seeded
    runs, against the uniform K / n (counts are Binomial(RUNS, K/n), their sum fixed: n-1 dof)."""
    counts = torch.zeros(N_ITEMS)
    for run in range(RUNS):
        kept = stream_into_buffer(run)
        assert kept.numel() == CAPACITY and kept.unique().numel() == CAPACITY  # no duplicate stream index
        counts[kept] += 1
    p = CAPACITY / N_ITEMS
    return float(((counts - RUNS * p) ** 2 / (RUNS * p * (1 - p))).sum())


def stream_reservoir(run: int) -> torch.Tensor:
    buffer = ReplayBuffer(CAPACITY, generator=torch.Generator().manual_seed(run))
    items = torch.arange(N_ITEMS)
    for chunk in items.split(BATCHES):
        buffer.add(chunk.float()[:, None], chunk)
    assert buffer.size == CAPACITY and buffer.n_seen == N_ITEMS
    return buffer.data().y


class BatchStaleReservoir(ReplayBuffer):
    """A vectorising slip: every item of a batch drawn as if it were the batch's first (s not
    advanced inside the batch), so later items of big batches are kept too often. The test must
    catch it."""

    def _reservoir_slots(self, n):
        s = torch.arange(self.n_seen, self.n_seen + n)
        stale = torch.where(s < self.capacity, s, max(self.n_seen, self.capacity))
        r = (torch.rand(n, generator=self.generator, dtype=torch.float64) * (stale + 1)).long()
        slots = torch.where(s < self.capacity, s, r)
        keep = torch.nonzero(slots < self.capacity).flatten()
        return slots[keep], keep


def stream_flawed_reservoir(run: int) -> torch.Tensor:
    buffer = BatchStaleReservoir(CAPACITY, generator=torch.Generator().manual_seed(run))
    for chunk in torch.arange(N_ITEMS).split(BATCHES):
        buffer.add(chunk.float()[:, None], chunk)
    return buffer.data().y


def test_reservoir_keeps_every_item_with_probability_capacity_over_seen():
    threshold = chi2_threshold(N_ITEMS - 1)
    assert inclusion_statistic(stream_reservoir) < threshold
    assert inclusion_statistic(stream_flawed_reservoir) > threshold


def test_first_items_fill_the_slots_in_order_and_last_write_wins():
    buffer = ReplayBuffer(4, generator=torch.Generator().manual_seed(0))
    buffer.add(torch.arange(3.0)[:, None], torch.arange(3))
    assert buffer.size == 3 and buffer.data().y.tolist() == [0, 1, 2]
    assert len(buffer) == 3 and "size=3" in repr(buffer)
    for start in range(3, 400, 25):  # large batches: many collisions per batch
        buffer.add(torch.arange(start, start + 25.0)[:, None], torch.arange(start, start + 25))
    data = buffer.data()
    assert data.y.unique().numel() == 4 and torch.equal(data.x[:, 0].long(), data.y)


def test_stores_raw_logits_and_task_ids():
    buffer = ReplayBuffer(8, generator=torch.Generator().manual_seed(1))
    logits = torch.tensor([[float("-inf"), 2.0], [1.5, -3.0]], dtype=torch.float64)
    buffer.add(torch.zeros(2, 3), torch.tensor([1, 0]), logits=logits, task_ids=2)
    data = buffer.data()
    assert data.logits.dtype == torch.float32 and torch.equal(data.logits, logits.float())
    assert data.task_ids.tolist() == [2, 2] and data.x.shape == (2, 3)


def test_sample_draws_distinct_slots():
    buffer = ReplayBuffer(20, generator=torch.Generator().manual_seed(2))
    buffer.add(torch.arange(15.0)[:, None], torch.arange(15))
    draw = buffer.sample(10)
    assert isinstance(draw, BufferSample) and draw.logits is None and draw.task_ids is None
    assert draw.index.unique().numel() == 10 and torch.equal(draw.x[:, 0].long(), draw.y)
    assert buffer.sample(99, allow_fewer=True).y.sort().values.tolist() == list(range(15))


def test_checkpoint_round_trip_continues_identically():
    def fresh():
        return ReplayBuffer(6, generator=torch.Generator().manual_seed(3))

    a = fresh()
    a.add(torch.randn(9, 2), torch.arange(9), logits=torch.randn(9, 4))
    saved = io.BytesIO()
    torch.save(a.state_dict(), saved)
    saved.seek(0)
    b = fresh()
    b.load_state_dict(torch.load(saved))
    assert b.size == a.size and b.n_seen == a.n_seen
    for field in ("x", "y", "logits"):
        assert torch.equal(getattr(a.data(), field), getattr(b.data(), field))
    batch = (torch.randn(5, 2), torch.arange(5), torch.randn(5, 4))
    a.add(*batch)
    b.add(*batch)
    assert torch.equal(a.data().x, b.data().x)
    assert torch.equal(a.sample(4).index, b.sample(4).index)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(7).load_state_dict(a.state_dict())


def test_task_balanced_memory_keeps_an_equal_share_per_task():
    buffer = ReplayBuffer(12, policy="task_balanced", generator=torch.Generator().manual_seed(4))
    for t in range(3):
        buffer.end_task(torch.randn(30, 2), torch.full((30,), t), t)
    assert buffer.data().task_ids.bincount().tolist() == [4, 4, 4]
    assert torch.equal(buffer.data().task_ids, buffer.data().y)
    with pytest.raises(RuntimeError, match="end_task"):
        buffer.add(torch.randn(1, 2), torch.tensor([0]))


@pytest.mark.parametrize("call,match", [
    (lambda b: b.sample(1), "empty"),
    (lambda b: (b.add(torch.zeros(2, 1), torch.tensor([0, 1])), b.sample(3)), "n=3"),
    (lambda b: b.sample(0), "n must"),
    (lambda b: b.add(torch.zeros(2, 1), torch.tensor([0])), "y must"),
    (lambda b: b.add(torch.zeros(2, 1), torch.tensor([0, 1]), logits=torch.zeros(3, 4)), "logits"),
    (lambda b: (b.add(torch.zeros(1, 1), torch.tensor([0])), b.add(torch.zeros(1, 1), torch.tensor([0]),
                                                                    logits=torch.zeros(1, 2))), "every add"),
    (lambda b: (b.add(torch.zeros(1, 1), torch.tensor([0])), b.add(torch.zeros(1, 3), torch.tensor([0]))), "x has"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(ReplayBuffer(4))


@pytest.mark.parametrize("kwargs,match", [(dict(capacity=0), "capacity"), (dict(capacity=3, policy="fifo"), "policy")])
def test_bad_construction_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReplayBuffer(**kwargs)


@pytest.mark.parametrize("device", devices())
def test_storage_lives_on_the_buffer_device(device):
    buffer = ReplayBuffer(4, device=device, generator=torch.Generator().manual_seed(5))
    buffer.add(torch.randn(6, 3, device=device), torch.arange(6, device=device), logits=torch.randn(6, 2))
    draw = buffer.sample(2)
    assert draw.x.device.type == device.type and draw.logits.device.type == device.type


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_add_and_sample_never_sync():
    buffer = ReplayBuffer(16, device="cuda", generator=torch.Generator().manual_seed(6))
    x, y, z = torch.randn(10, 3, device="cuda"), torch.arange(10, device="cuda"), torch.randn(10, 4, device="cuda")
    buffer.add(x, y, logits=z)  # creates the storage
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            buffer.add(x, y, logits=z)
            buffer.sample(8)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def filled_buffer(**kwargs):
    buffer = ReplayBuffer(6, generator=torch.Generator().manual_seed(7), **kwargs)
    buffer.add(torch.randn(4, 2), torch.arange(4), logits=torch.randn(4, 3))
    return buffer


def edited(state, **changes):
    state = dict(state, fields=dict(state["fields"]))
    for key, value in changes.items():
        if key.startswith("fields_"):
            state["fields"][key[len("fields_"):]] = value
        else:
            state[key] = value
    return state


@pytest.mark.parametrize("change,match", [
    (lambda s: edited(s, fields_x=s["fields"]["x"][:3]), r"'x'\] has 3 samples, expected 4"),
    (lambda s: edited(s, fields_y=torch.arange(3)), r"'y'\] has 3 samples"),
    (lambda s: edited(s, fields={}), r"state\['fields'\] must hold \['x', 'y'\]"),
    (lambda s: edited(s, fields_x=torch.empty(0, 2)), r"'x'\] has 0 samples"),
    (lambda s: edited(s, fields_y=s["fields"]["y"].float()), r"'y'\] must have dtype int64, int32"),
    (lambda s: edited(s, fields_logits=s["fields"]["logits"].long()), r"'logits'\] must be a floating"),
    (lambda s: edited(s, fields_z=torch.zeros(4)), "unknown keys"),
    (lambda s: edited(s, n_seen=-1), r"n_seen'\] must be an int >= 0"),
    (lambda s: edited(s, n_seen=2.0), r"n_seen'\] must be an int"),
    (lambda s: edited(s, n_seen=3), r"has 4 samples, expected 3"),  # fewer seen than stored
    (lambda s: {k: v for k, v in s.items() if k != "generator"}, r"missing \['generator'\]"),
    (lambda s: edited(s, extra=1), r"unknown \['extra'\]"),
    (lambda s: edited(s, generator=torch.zeros(3, dtype=torch.uint8)), r"state\['generator'\] is not a valid"),
    (lambda s: edited(s, sample_generator=[1, 2]), r"state\['sample_generator'\] must be a uint8 tensor"),
])
def test_load_state_dict_validates_everything_before_changing_the_buffer(change, match):
    source = filled_buffer()
    target = ReplayBuffer(6, generator=torch.Generator().manual_seed(8))
    target.add(torch.randn(2, 2), torch.tensor([5, 6]), logits=torch.randn(2, 3))
    before = target.state_dict()
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(change(source.state_dict()))
    after = target.state_dict()  # untouched: not half-loaded
    assert after["n_seen"] == 2 and torch.equal(after["generator"], before["generator"])
    for k in ("x", "y", "logits"):
        assert torch.equal(after["fields"][k], before["fields"][k])


def test_task_balanced_state_needs_task_ids_and_at_most_capacity_seen():
    buffer = ReplayBuffer(4, policy="task_balanced", generator=torch.Generator().manual_seed(9))
    buffer.end_task(torch.randn(5, 2), torch.arange(5), 0)
    state = buffer.state_dict()
    with pytest.raises(ValueError, match="task_ids"):
        ReplayBuffer(4, policy="task_balanced").load_state_dict(edited(state, fields={
            k: v for k, v in state["fields"].items() if k != "task_ids"}))
    with pytest.raises(ValueError, match="at most capacity=4"):
        ReplayBuffer(4, policy="task_balanced").load_state_dict(edited(state, n_seen=9))
    copy = ReplayBuffer(4, policy="task_balanced")
    copy.load_state_dict(state)
    assert torch.equal(copy.data().task_ids, buffer.data().task_ids)


def test_state_dict_and_load_state_dict_copy_the_tensors():
    buffer = filled_buffer()
    state = buffer.state_dict()
    state["fields"]["x"].zero_()  # the caller's dict is not the buffer's storage
    assert not torch.equal(buffer.data().x, torch.zeros(4, 2))
    copy = ReplayBuffer(6)
    state = buffer.state_dict()
    copy.load_state_dict(state)
    state["fields"]["x"].add_(1.0)
    state["fields"]["y"].zero_()
    assert torch.equal(copy.data().x, buffer.data().x) and torch.equal(copy.data().y, buffer.data().y)
    empty = ReplayBuffer(6)
    empty.load_state_dict(ReplayBuffer(6).state_dict())  # an empty buffer's state loads
    assert empty.size == 0


def test_load_state_dict_stores_labels_as_int64_and_logits_as_float32():
    state = filled_buffer().state_dict()
    fields = dict(state["fields"], y=state["fields"]["y"].int(), logits=state["fields"]["logits"].double())
    copy = ReplayBuffer(6)
    copy.load_state_dict(dict(state, fields=fields))
    assert copy.data().y.dtype == torch.int64 and copy.data().logits.dtype == torch.float32
    copy.add(torch.randn(1, 2), torch.tensor([1]), logits=torch.randn(1, 3))
