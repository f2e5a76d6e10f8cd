"""ReplayBuffer: reservoir sampling over a stream, stored on the device (continual.md 4.2).

The reservoir draws are made on the host with a host generator and the seen-count is a host int,
so `add` never waits on the device; the chosen slots reach the device through pinned memory
and one `index_copy_` per field. `sample` draws distinct slots with a device `randperm`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from ..ops._checks import check_choice, check_int, check_state_keys, check_tensor

_FIELDS = ("x", "y", "logits", "task_ids")
_POLICIES = ("reservoir", "task_balanced")


class BufferSample(NamedTuple):
    x: Tensor
    y: Tensor
    logits: Optional[Tensor]    # float32, as produced by the model (never masked)
    task_ids: Optional[Tensor]
    index: Tensor               # the slots drawn


class ReplayBuffer:
    """A fixed-capacity memory of stream samples.

    policy="reservoir": after n stream items every item is held with probability capacity / n
    (Algorithm R). policy="task_balanced": `end_task(x, y, t)` keeps capacity // (t + 1) random
    samples of every task seen (EAT's memory).
    """

    def __init__(self, capacity: int, *, device: Union[str, torch.device, None] = None,
                 generator: Optional[torch.Generator] = None, policy: str = "reservoir"):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        check_choice("policy", policy, _POLICIES)
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator (the reservoir draws are made on the host), "
                             f"got one on {generator.device}")
        self.capacity, self.policy = capacity, policy
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.generator = generator if generator is not None else torch.Generator().manual_seed(
            int(torch.randint(2**62, (1,))))
        self.n_seen = 0
        self._store: dict[str, Tensor] = {}
        self._sample_generator = torch.Generator(self.device).manual_seed(
            int(torch.randint(2**62, (1,), generator=self.generator)))

    @property
    def size(self) -> int:
        return min(self.n_seen, self.capacity)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        fields = ", ".join(self._store) or "empty"
        return f"ReplayBuffer(capacity={self.capacity}, size={self.size}, n_seen={self.n_seen}, fields=({fields}))"

    # ---- writing -------------------------------------------------------------------------------

    def add(self, x: Tensor, y: Tensor, logits: Optional[Tensor] = None,
            task_ids: Union[Tensor, int, None] = None) -> None:
        """Offer a batch of stream samples to the reservoir. `logits` are stored as given (raw)."""
        if self.policy != "reservoir":
            raise RuntimeError("a task_balanced buffer is filled by end_task(x, y, t), not add")
        batch = self._validate(x, y, logits, task_ids)
        n = batch["x"].shape[0]
        if n == 0:
            return
        slots, positions = self._reservoir_slots(n)
        self.n_seen += n
        if slots.numel():
            self._write(batch, slots, positions)

    def end_task(self, x: Tensor, y: Tensor, t: int, logits: Optional[Tensor] = None) -> None:
        """task_balanced: after task t, hold capacity // (t + 1) random samples of every task."""
        if self.policy != "task_balanced":
            raise RuntimeError("end_task belongs to policy='task_balanced'; a reservoir buffer is filled by add")
        if not isinstance(t, int) or t < 0:
            raise ValueError(f"t must be a non-negative int, got {t!r}")
        batch = self._validate(x, y, logits, t)
        per_task = self.capacity // (t + 1)
        kept = []
        if self.size:
            task_ids = self._store["task_ids"][: self.size].cpu()
            for old in task_ids.unique().tolist():  # once per task boundary, not per step
                kept.append(torch.nonzero(task_ids == old).flatten()[:per_task])
        new = torch.randperm(batch["x"].shape[0], generator=self.generator)[:per_task]
        merged = {}
        for k, v in batch.items():
            fresh = v.index_select(0, new.to(v.device)).to(self.device)
            merged[k] = torch.cat([self._store[k][torch.cat(kept).to(self.device)], fresh]) if kept else fresh
        self._store.clear()
        self.n_seen = merged["x"].shape[0]
        every = torch.arange(self.n_seen)
        self._write(merged, every, every)

    def _validate(self, x, y, logits, task_ids) -> dict[str, Tensor]:
        check_tensor("x", x)
        if x.dim() < 1:
            raise ValueError("x must have a batch dimension")
        n = x.shape[0]
        check_tensor("y", y, dtypes=(torch.int64, torch.int32), dim=1)
        if y.shape[0] != n:
            raise ValueError(f"y must be [{n}] like x's batch, got shape {tuple(y.shape)}")
        batch = {"x": x, "y": y.long()}
        if logits is not None:
            check_tensor("logits", logits, floating=True, dim=2)
            if logits.shape[0] != n:
                raise ValueError(f"logits must be [{n}, C] like x's batch, got shape {tuple(logits.shape)}")
            batch["logits"] = logits.detach().float()
        if task_ids is not None:
            if isinstance(task_ids, int):
                task_ids = torch.full((n,), task_ids, dtype=torch.long, device=x.device)
            check_tensor("task_ids", task_ids, dtypes=(torch.int64, torch.int32), dim=1)
            if task_ids.shape[0] != n:
                raise ValueError(f"task_ids must be [{n}] like x's batch, got shape {tuple(task_ids.shape)}")
            batch["task_ids"] = task_ids.long()
        batch["x"] = batch["x"].detach()
        if self._store:
            missing = set(self._store) ^ set(batch)
            if missing:
                raise ValueError(f"the buffer stores {sorted(self._store)}; every add must supply exactly those "
                                 f"(got {sorted(batch)}), else slots would mix samples with and without them")
            for k, v in batch.items():
                if v.shape[1:] != self._store[k].shape[1:]:
                    raise ValueError(f"{k} has per-sample shape {tuple(v.shape[1:])}, the buffer holds "
                                     f"{tuple(self._store[k].shape[1:])}")
        return batch

    def _reservoir_slots(self, n: int) -> tuple[Tensor, Tensor]:
        """Algorithm R for stream items n_seen .. n_seen + n - 1, drawn together: (slots, batch
        positions) of the items kept, the last one winning when two land on the same slot."""
        s = torch.arange(self.n_seen, self.n_seen + n, dtype=torch.long)
        u = torch.rand(n, generator=self.generator, dtype=torch.float64)
        r = torch.minimum((u * (s + 1).double()).long(), s)  # uniform in {0, .., s}
        slots = torch.where(s < self.capacity, s, r)
        positions = torch.nonzero(slots < self.capacity).flatten()
        slots = slots[positions]
        # Sort by (slot, position) and keep each slot's last position.
        order = torch.argsort(slots * n + positions)
        slots, positions = slots[order], positions[order]
        last = torch.ones_like(slots, dtype=torch.bool)
        last[:-1] = slots[1:] != slots[:-1]
        return slots[last], positions[last]

    def _write(self, batch: dict[str, Tensor], slots: Tensor, positions: Tensor) -> None:
        slots = _to_device(slots, self.device)
        for k, v in batch.items():
            rows = v.index_select(0, _to_device(positions, v.device)).to(self.device)
            if k not in self._store:
                dtype = torch.float32 if k == "logits" else v.dtype
                self._store[k] = torch.zeros((self.capacity,) + tuple(v.shape[1:]), dtype=dtype, device=self.device)
            self._store[k].index_copy_(0, slots, rows.to(self._store[k].dtype))

    # ---- reading -------------------------------------------------------------------------------

    def sample(self, n: int, *, allow_fewer: bool = False) -> BufferSample:
        """n distinct stored samples, uniformly. n may exceed what is stored only with allow_fewer
        (then every stored sample comes back, shuffled)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if self.size == 0:
            raise ValueError("sample: the buffer is empty (check len(buffer) first)")
        if n > self.size and not allow_fewer:
            raise ValueError(f"sample: n={n} but the buffer holds {self.size} samples (pass allow_fewer=True "
                             f"to take them all)")
        index = torch.randperm(self.size, device=self.device, generator=self._sample_generator)[:n]
        return BufferSample(*(self._store[k][index] if k in self._store else None for k in _FIELDS), index)

    def data(self) -> BufferSample:
        """Everything stored, in slot order."""
        if self.size == 0:
            raise ValueError("data: the buffer is empty")
        index = torch.arange(self.size, device=self.device)
        return BufferSample(*(self._store[k][: self.size] if k in self._store else None for k in _FIELDS), index)

    # ---- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "policy": self.policy, "n_seen": self.n_seen,
                "fields": {k: v[: self.size].clone() for k, v in self._store.items()},
                "generator": self.generator.get_state(), "sample_generator": self._sample_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`. Everything is checked before anything is assigned, so a bad
        state raises ValueError and leaves the buffer as it was; the tensors are copied."""
        check_state_keys(state, _STATE_KEYS, "ReplayBuffer")
        if state["capacity"] != self.capacity or state["policy"] != self.policy:
            raise ValueError(f"state is for capacity={state['capacity']}, policy={state['policy']!r}; this buffer "
                             f"has capacity={self.capacity}, policy={self.policy!r}")
        n_seen = check_int("state['n_seen']", state["n_seen"], minimum=0)
        if self.policy == "task_balanced" and n_seen > self.capacity:
            raise ValueError(f"state['n_seen'] = {n_seen}: a task_balanced buffer holds every sample it has seen, "
                             f"at most capacity={self.capacity}")
        store = _checked_fields(state["fields"], min(n_seen, self.capacity), self.policy)
        generator = _checked_generator_state("generator", state["generator"], torch.device("cpu"))
        sample_generator = _checked_generator_state("sample_generator", state["sample_generator"], self.device)
        for k, v in store.items():
            full = torch.zeros((self.capacity,) + tuple(v.shape[1:]), dtype=v.dtype, device=self.device)
            full[: v.shape[0]] = v.to(self.device)  # a copy: never the caller's tensor
            store[k] = full
        # Everything checked and allocated: commit.
        self.n_seen, self._store = n_seen, store
        self.generator.set_state(generator)
        self._sample_generator.set_state(sample_generator)


_STATE_KEYS = frozenset(("capacity", "policy", "n_seen", "fields", "generator", "sample_generator"))


def _checked_fields(fields, size: int, policy: str) -> dict[str, Tensor]:
    """state['fields'] checked against the `size` stored samples, in the dtypes the store keeps."""
    if not isinstance(fields, dict):
        raise ValueError(f"state['fields'] must be a dict field -> tensor, got {type(fields).__name__}")
    unknown = sorted(set(fields) - set(_FIELDS), key=str)
    if unknown:
        raise ValueError(f"state['fields'] has unknown keys {unknown}; the fields are {list(_FIELDS)}")
    required = {"x", "y", "task_ids"} if policy == "task_balanced" else {"x", "y"}
    if size > 0 and not required <= set(fields):
        raise ValueError(f"state['fields'] must hold {sorted(required)} for the {size} stored samples, "
                         f"got {sorted(fields)}")
    out = {}
    for k, v in fields.items():
        name = f"state['fields'][{k!r}]"
        check_tensor(name, v)
        if k == "x" and v.dim() < 1:
            raise ValueError(f"{name} must have a sample dimension, got shape {tuple(v.shape)}")
        if k in ("y", "task_ids"):  # labels: int64 in the store, as add makes them
            check_tensor(name, v, dtypes=(torch.int64, torch.int32), dim=1)
            v = v.long()
        if k == "logits":
            check_tensor(name, v, floating=True, dim=2)
            v = v.float()
        if v.shape[0] != size:
            raise ValueError(f"{name} has {v.shape[0]} samples, expected {size} = min(n_seen, capacity) "
                             f"(shape {tuple(v.shape)})")
        out[k] = v.detach()
    return out


def _checked_generator_state(key: str, value, device: torch.device) -> Tensor:
    """A generator state that set_state accepts, tried on a scratch generator of the same device."""
    if not isinstance(value, Tensor) or value.dtype != torch.uint8:
        raise ValueError(f"state[{key!r}] must be a uint8 tensor from Generator.get_state(), got "
                         f"{value.dtype if isinstance(value, Tensor) else type(value).__name__}")
    value = value.detach().cpu().clone()
    try:
        torch.Generator(device).set_state(value)
    except RuntimeError as exc:
        raise ValueError(f"state[{key!r}] is not a valid {device.type} generator state ({exc})") from None
    return value


def _to_device(index: Tensor, device: torch.device) -> Tensor:
    """A host index tensor on `device` without a blocking copy (pinned memory, async)."""
    if device.type == "cpu" or index.device == device:
        return index
    return index.pin_memory().to(device, non_blocking=True)
