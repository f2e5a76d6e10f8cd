"""pgd_linf, robust accuracy and EAT: the ball and box hold, the loss rises, only the input
gradient is taken, and EAT never attacks the target model."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import devices
from pyfastlab.continual import ExternalAdversarialTraining, accuracy, adversarial, pgd_linf, robust_accuracy


def fixed_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def data(n=64, seed=1, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 8, generator=gen).to(device), torch.randint(3, (n,), generator=gen).to(device)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_the_ball_and_box_and_raises_the_loss(device, random_start):
    model = fixed_model().to(device)
    x, y = data(device=device)
    x_adv = pgd_linf(model, x, y, eps=0.1, step_size=0.03, steps=10, random_start=random_start,
                     generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    noise = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device).sign()).clamp(0, 1)
    with torch.no_grad():  # it beats a random corner of the same ball
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(noise), y) > 0
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_pgd_takes_the_input_gradient_only_and_leaves_the_mode():
    model = fixed_model()
    model.eval()
    x, y = data()
    x_before = x.clone()
    pgd_linf(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training and torch.equal(x, x_before)


def test_pgd_without_steps_or_eps():
    model = fixed_model()
    x, y = data()
    start = pgd_linf(model, x, y, eps=0.2, steps=0, generator=torch.Generator().manual_seed(0))
    assert float((start - x).abs().max()) <= 0.2 + 1e-6 and 0 <= float(start.min()) and float(start.max()) <= 1
    assert torch.equal(pgd_linf(model, x, y, eps=0.0), x)
    unboxed = pgd_linf(model, x * 4, y, eps=0.5, clamp=None, random_start=False)
    assert float(unboxed.max()) > 1.0


@pytest.mark.parametrize("kwargs,name", [(dict(eps=-0.1), "eps"), (dict(eps=float("inf")), "eps"),
                                         (dict(steps=-1), "steps"), (dict(steps=2.5), "steps"),
                                         (dict(step_size=float("nan")), "step_size")])
def test_pgd_bad_input_is_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        pgd_linf(fixed_model(), *data(), **kwargs)


def test_robust_accuracy_is_accuracy_under_the_attack_and_restores_the_mode():
    model = fixed_model()
    x, y = data(256)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):  # a model that fits the data, so there is accuracy to lose
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.train()
    clean = accuracy(model, x, y)
    robust = robust_accuracy(model, x, y, eps=0.2, step_size=0.05)
    assert model.training and 0.0 <= robust < clean
    assert robust_accuracy(model, x, y, eps=0.0) == pytest.approx(clean)


def test_eat_never_attacks_the_target(monkeypatch):
    target = fixed_model(5)
    target_calls = []
    target.register_forward_hook(lambda *_: target_calls.append(1))
    made, attacked = [], []

    def factory():
        made.append(fixed_model(len(made)))
        return made[-1]

    real_pgd = adversarial.pgd_linf

    def recording_pgd(model, *args, **kwargs):
        attacked.append(model)
        return real_pgd(model, *args, **kwargs)

    monkeypatch.setattr(adversarial, "pgd_linf", recording_pgd)
    eat = ExternalAdversarialTraining(factory, epochs=2, batch_size=16, attack=dict(eps=0.1, step_size=0.03),
                                      generator=torch.Generator().manual_seed(0))
    x, y = data(40)
    x_adv, y_adv = eat.generate(x, y)
    assert len(made) == 1 and attacked and all(m is made[0] for m in attacked)
    assert not target_calls
    assert torch.equal(y_adv, y) and float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    eat.generate(x, y)
    assert len(made) == 2  # a fresh external model per task


@pytest.mark.parametrize("kwargs,name", [(dict(epochs=-1), "epochs"), (dict(batch_size=0), "batch_size"),
                                         (dict(lr=0.0), "lr"), (dict(attack=dict(eps_=1)), "attack")])
def test_eat_bad_input_is_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ExternalAdversarialTraining(fixed_model, **kwargs)
