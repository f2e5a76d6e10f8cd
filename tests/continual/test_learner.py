"""ReplayLearner: DER stores raw logits whatever the stream loss masks; the buffer gets clean
samples; ER replays buffer rows unmasked."""
import torch
from torch import nn

from pyfastlab.continual import (DERPPLoss, ERLoss, GeneralMaskedCrossEntropy, ReplayBuffer, ReplayLearner,
                                 split_digits)
from pyfastlab.continual.metrics import final_average_accuracy, forgetting


def setup(loss, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = nn.Linear(4, 6)
    buffer = ReplayBuffer(32, generator=torch.Generator().manual_seed(seed))
    return model, buffer, ReplayLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, buffer, **kwargs)


def masking_gms():
    return GeneralMaskedCrossEntropy(policy="current_task", num_classes=6, classes_per_task=2)


def test_der_stores_the_raw_logits_when_the_stream_loss_masks():
    model, buffer, learner = setup(DERPPLoss(gms=masking_gms()))
    learner.begin_task(1)
    x, y = torch.randn(5, 4), torch.tensor([2, 3, 2, 2, 3])
    with torch.no_grad():
        expected = model(x)  # before the step, every column, nothing at -inf
    learner.observe(x, y)
    stored = buffer.data()
    assert torch.equal(stored.logits, expected) and torch.isfinite(stored.logits).all()
    assert torch.equal(stored.x, x) and torch.equal(stored.y, y)


def test_der_under_naive_adversarial_training_stores_the_clean_samples_logits():
    attack = dict(eps=0.3, step_size=0.1, steps=3, clamp=None)
    model, buffer, learner = setup(DERPPLoss(), adversarial_training=attack)
    learner.begin_task(0)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])
    with torch.no_grad():
        expected = model(x)
    learner.observe(x, y)
    assert torch.equal(buffer.data().x, x) and torch.allclose(buffer.data().logits, expected)


def test_only_the_rows_chosen_by_store_reach_the_buffer():
    _, buffer, learner = setup(ERLoss())
    learner.begin_task(0)
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
    learner.observe(x, y, store=torch.tensor([True, False, True, False]))
    assert torch.equal(buffer.data().x, x[[0, 2]])


def test_er_steps_on_stream_and_replayed_rows():
    model, buffer, learner = setup(ERLoss(masking_gms()))
    learner.begin_task(0)
    learner.observe(torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1]))
    learner.begin_task(1)
    before = model.weight.detach().clone()
    loss = learner.observe(torch.randn(6, 4), torch.tensor([2, 3, 2, 3, 2, 3]))
    # Replayed rows (classes 0, 1) are unmasked, so their rows of the head move too.
    assert torch.isfinite(loss) and not torch.equal(model.weight[:2], before[:2])
    assert buffer.size == 12


def test_split_digits_and_metrics():
    tasks = split_digits()
    assert [t.classes for t in tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert sum(t.x_train.shape[0] for t in tasks) == 1258 and sum(t.x_test.shape[0] for t in tasks) == 539
    assert all(0 <= float(t.x_train.min()) and float(t.x_train.max()) <= 1 for t in tasks)
    assert all(set(t.y_test.tolist()) == set(t.classes) for t in tasks)
    acc = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.6, 0.4, 0.7]]
    assert final_average_accuracy(acc) == (0.6 + 0.4 + 0.7) / 3
    assert forgetting(acc) == ((0.9 - 0.6) + (0.8 - 0.4)) / 2
    assert forgetting([[1.0]]) == 0.0
