"""ReplayLearner: the online training step shared by ER, ER-ACE, DER and DER++.

One `observe` = one optimizer step on a stream batch plus replayed buffer samples, then the
stream batch is offered to the buffer (with the model's raw logits when the loss distils them).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .adversarial import pgd_linf
from .buffer import ReplayBuffer
from .losses import DERLoss, DERPPLoss, ERACELoss, ERLoss


class ReplayLearner:
    """Trains `model` online with a replay loss.

    `adversarial_training` (a pgd_linf settings dict) turns on naive adversarial training: the
    stream and replay batches are replaced by PGD examples crafted against the model itself.
    The buffer always receives the clean stream samples.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: nn.Module,
                 buffer: Optional[ReplayBuffer] = None, *, replay_batch: int = 10,
                 adversarial_training: Optional[dict] = None):
        if not isinstance(loss, (ERLoss, ERACELoss, DERLoss)):
            raise ValueError(f"loss must be an ERLoss, ERACELoss, DERLoss or DERPPLoss, got {type(loss).__name__}")
        if isinstance(replay_batch, bool) or not isinstance(replay_batch, int) or replay_batch < 1:
            raise ValueError(f"replay_batch must be a positive int, got {replay_batch!r}")
        self.model, self.optimizer, self.loss, self.buffer = model, optimizer, loss, buffer
        self.replay_batch, self.adversarial_training = replay_batch, adversarial_training

    def begin_task(self, t: int, classes: Optional[Sequence[int]] = None) -> None:
        self.loss.begin_task(t, classes)

    def _attack(self, x: Tensor, y: Tensor) -> Tensor:
        return x if self.adversarial_training is None else pgd_linf(self.model, x, y, **self.adversarial_training)

    def _draw(self):
        if self.buffer is None or len(self.buffer) == 0:
            return None
        return self.buffer.sample(self.replay_batch, allow_fewer=True)

    def observe(self, x: Tensor, y: Tensor, *, store: Optional[Tensor] = None) -> Tensor:
        """One step on the stream batch (x, y); `store` (bool [B]) picks the rows offered to the
        buffer (default all). Returns the loss, detached (reading it is the caller's sync)."""
        self.model.train()
        draw = self._draw()
        xs = self._attack(x, y)
        if isinstance(self.loss, DERLoss):
            stream_logits = self.model(xs)
            args = [stream_logits, y]
            if draw is not None:
                args += [self.model(self._attack(draw.x, draw.y)), draw.logits]
                if isinstance(self.loss, DERPPLoss):
                    second = self._draw()
                    args += [self.model(self._attack(second.x, second.y)), second.y]
            loss = self.loss(*args)
        elif draw is None:
            stream_logits = self.model(xs)
            loss = self.loss(stream_logits, y)
        else:
            xb = self._attack(draw.x, draw.y)
            if isinstance(self.loss, ERLoss):  # one forward over stream and buffer rows (mammoth's ER)
                logits = self.model(torch.cat([xs, xb]))
                stream_logits, buffer_logits = logits[: x.shape[0]], logits[x.shape[0]:]
            else:
                stream_logits, buffer_logits = self.model(xs), self.model(xb)
            loss = self.loss(stream_logits, y, buffer_logits, draw.y)
        # DER distils the logits as the model produced them before this step: raw, whatever the
        # stream loss masked, and of the clean samples that the buffer keeps.
        logits = None
        if self.buffer is not None and isinstance(self.loss, DERLoss):
            if xs is x:
                logits = stream_logits.detach()
            else:
                with torch.no_grad():
                    logits = self.model(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.buffer is not None:
            self._store(x, y, logits, store)
        return loss.detach()

    def _store(self, x: Tensor, y: Tensor, logits: Optional[Tensor], store: Optional[Tensor]) -> None:
        if store is not None:
            x, y = x[store], y[store]
            logits = logits[store] if logits is not None else None
        self.buffer.add(x, y, logits=logits)
