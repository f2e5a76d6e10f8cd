"""Replay losses ER, ER-ACE, DER and DER++ with the general masked cross-entropy on the stream
part (continual.md 4.3). Without a masking module each is its plain baseline."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops._checks import check_choice, check_finite
from .masking import GeneralMaskedCrossEntropy

_COMBINES = ("concat", "sum")


def _unmasked(gms: Optional[GeneralMaskedCrossEntropy]) -> GeneralMaskedCrossEntropy:
    return gms if gms is not None else GeneralMaskedCrossEntropy(policy="none")


def _replay_ce(gms: GeneralMaskedCrossEntropy, logits: Tensor, target: Tensor) -> Tensor:
    """Plain cross-entropy of buffer rows, on the same kernels and ignore_index as the stream."""
    return ops.masked_cross_entropy(logits, target, ignore_index=gms.ignore_index, backend=gms.backend)


class _ReplayLoss(nn.Module):
    """Holds the stream's masking module and forwards task boundaries to it."""

    def __init__(self, gms: Optional[GeneralMaskedCrossEntropy]):
        super().__init__()
        self.gms = _unmasked(gms)

    def begin_task(self, t: int, classes: Optional[Sequence[int]] = None) -> None:
        self.gms.begin_task(t, classes)


class ERLoss(_ReplayLoss):
    """Experience replay. combine="concat": one masked CE over [stream; buffer] rows, the buffer
    rows unmasked, mean over counted rows. combine="sum": CE_gms(stream) + CE(buffer)."""

    def __init__(self, gms: Optional[GeneralMaskedCrossEntropy] = None, combine: str = "concat"):
        super().__init__(gms)
        check_choice("combine", combine, _COMBINES)
        self.combine = combine

    def forward(self, stream_logits: Tensor, stream_target: Tensor, buffer_logits: Optional[Tensor] = None,
                buffer_target: Optional[Tensor] = None) -> Tensor:
        if (buffer_logits is None) != (buffer_target is None):
            raise ValueError("buffer_logits and buffer_target go together: pass both or neither")
        if buffer_logits is None:
            return self.gms(stream_logits, stream_target)
        if self.combine == "sum":
            return self.gms(stream_logits, stream_target) + _replay_ce(self.gms, buffer_logits, buffer_target)
        n_stream, n_buffer = stream_logits.shape[0], buffer_logits.shape[0]
        is_replay = torch.cat([torch.zeros(n_stream, dtype=torch.bool, device=stream_logits.device),
                               torch.ones(n_buffer, dtype=torch.bool, device=stream_logits.device)])
        return self.gms(torch.cat([stream_logits, buffer_logits]), torch.cat([stream_target, buffer_target]),
                        is_replay=is_replay)


class ERACELoss(_ReplayLoss):
    """ER-ACE: from the second task, stream rows compete only among the classes present in the
    stream batch (and the unseen ones); buffer rows use the whole head. `average` halves the sum.

    mask_rule says which classes count as unseen. "paper" (default): those of no task begun so far,
    so a current-task class absent from the batch is masked. "mammoth" (aimagelab/mammoth,
    models/er_ace.py): every class from the largest label any stream batch has shown so far upward,
    that class included. There the largest seen class stays open when absent from the batch, the
    classes above it stay open (current-task ones no batch has shown yet too), and a class below it
    is masked unless in the batch. Labels are recorded from the first task on; begin_task needs no
    classes. mammoth fills with -1e9: pass mask_value=-1e9 for its exact graph (-inf gives the same
    loss and gradient unless logits reach -1e9).
    """

    def __init__(self, num_classes: int, *, mask_value: float = float("-inf"), average: bool = False,
                 ace_include_unseen: bool = True, classes_per_task=None, ignore_index: int = -100,
                 mask_rule: str = "paper", backend: str = "auto"):
        super().__init__(GeneralMaskedCrossEntropy(
            mask_value=mask_value, policy="batch_present", num_classes=num_classes, classes_per_task=classes_per_task,
            ace_include_unseen=ace_include_unseen, ace_mask_rule=mask_rule, ignore_index=ignore_index,
            backend=backend))
        self.average = bool(average)

    def forward(self, stream_logits: Tensor, stream_target: Tensor, buffer_logits: Optional[Tensor] = None,
                buffer_target: Optional[Tensor] = None) -> Tensor:
        loss = self.gms(stream_logits, stream_target)
        if buffer_logits is not None:
            loss = loss + _replay_ce(self.gms, buffer_logits, buffer_target)
        return loss / 2 if self.average else loss


class DERLoss(_ReplayLoss):
    """Dark experience replay: CE_gms(stream) + alpha * mean squared error between the model's
    logits of buffer samples and the raw logits stored with them."""

    def __init__(self, alpha: float = 0.1, gms: Optional[GeneralMaskedCrossEntropy] = None):
        super().__init__(gms)
        check_finite("alpha", alpha)
        self.alpha = float(alpha)

    def forward(self, stream_logits: Tensor, stream_target: Tensor, buffer_logits: Optional[Tensor] = None,
                stored_logits: Optional[Tensor] = None) -> Tensor:
        loss = self.gms(stream_logits, stream_target)
        if buffer_logits is not None:
            loss = loss + self.alpha * self.logit_mse(buffer_logits, stored_logits)
        return loss

    @staticmethod
    def logit_mse(buffer_logits: Tensor, stored_logits: Optional[Tensor]) -> Tensor:
        if stored_logits is None or stored_logits.shape != buffer_logits.shape:
            raise ValueError(f"stored_logits must match buffer_logits {tuple(buffer_logits.shape)}, got "
                             f"{None if stored_logits is None else tuple(stored_logits.shape)}")
        return F.mse_loss(buffer_logits, stored_logits.to(buffer_logits.dtype))


class DERPPLoss(DERLoss):
    """DER++: DER plus beta * CE on the labels of a second, independent buffer draw."""

    def __init__(self, alpha: float = 0.1, beta: float = 0.5, gms: Optional[GeneralMaskedCrossEntropy] = None):
        super().__init__(alpha, gms)
        check_finite("beta", beta)
        self.beta = float(beta)

    def forward(self, stream_logits: Tensor, stream_target: Tensor, buffer_logits: Optional[Tensor] = None,
                stored_logits: Optional[Tensor] = None, buffer2_logits: Optional[Tensor] = None,
                buffer2_target: Optional[Tensor] = None) -> Tensor:
        loss = super().forward(stream_logits, stream_target, buffer_logits, stored_logits)
        if buffer2_logits is not None:
            loss = loss + self.beta * _replay_ce(self.gms, buffer2_logits, buffer2_target)
        return loss
