"""Procedural dSprites-compatible data (vae.md 4.5): the official factor grid and index order,
rendered on demand, with the factor-sampling interface the metrics use.

Flat index = sum_f class_f * base_f with posY fastest (bases 245760, 40960, 1024, 32, 1 over
shape, scale, orientation, posX, posY, times 737280 for the constant color). A reduced grid keeps
that order over its own classes. Nothing is downloaded and the full grid (3 GB as uint8) is never
materialised: `images` renders any batch of classes, and only reduced grids are cached.
"""
from __future__ import annotations

import io
import math
import zipfile
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .render import FACTOR_NAMES, FULL_SIZES, check_classes, factor_values, render

DEMO_GRID = {"shape": [0, 1, 2], "scale": [0, 2, 5], "orientation": list(range(0, 40, 4)),
             "posX": [0, 4, 9, 13, 18, 22, 27, 31], "posY": [0, 4, 9, 13, 18, 22, 27, 31]}
_CACHE_AUTO_BYTES = 256 * 2 ** 20   # "auto" caches grids up to this size as uint8
_NPZ_CHUNK = 4096


def _strides(sizes: Sequence[int]) -> Tensor:
    """Row-major strides, last factor fastest."""
    strides = [1] * len(sizes)
    for f in range(len(sizes) - 2, -1, -1):
        strides[f] = strides[f + 1] * sizes[f + 1]
    return torch.tensor(strides, dtype=torch.long)


def _parse_grid(grid) -> list[Tensor]:
    if grid is None:
        return [torch.arange(n) for n in FULL_SIZES]
    if isinstance(grid, str):
        if grid != "demo":
            raise ValueError(f"grid must be None, 'demo' or a {{factor: [classes]}} dict, got {grid!r}")
        grid = DEMO_GRID
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must be None, 'demo' or a {{factor: [classes]}} dict, got {type(grid).__name__}")
    unknown = set(grid) - set(FACTOR_NAMES)
    if unknown:
        raise ValueError(f"grid has unknown factors {sorted(unknown)}; factors are {FACTOR_NAMES}")
    out = []
    for f, name in enumerate(FACTOR_NAMES):
        classes = torch.as_tensor(grid.get(name, range(FULL_SIZES[f])), dtype=torch.long).flatten()
        if classes.numel() == 0:
            raise ValueError(f"grid[{name!r}] is empty")
        if bool(((classes < 0) | (classes >= FULL_SIZES[f])).any()):
            raise ValueError(f"grid[{name!r}] must hold classes in 0..{FULL_SIZES[f] - 1}, got {classes.tolist()}")
        if torch.unique(classes).numel() != classes.numel():
            raise ValueError(f"grid[{name!r}] repeats a class: {classes.tolist()}")
        out.append(torch.sort(classes).values)
    return out


class DSprites(torch.utils.data.Dataset):
    """dSprites-compatible sprites: `ds[i]` → (image `[1, S, S]` float32 in {0, 1}, classes `[5]`).

    grid: None (full 737,280-image grid), "demo" (5760 images: shape {0,1,2}, scale {0,2,5},
    orientation {0,4,...,36}, posX = posY = {0,4,9,13,18,22,27,31}) or {factor: [classes]} with
    factors named as in FACTOR_NAMES (missing factors keep all their classes). Classes are always
    the full grid's class indices (latents_classes without color); `factor_sizes` are this grid's.
    cache: "auto" (render once and keep uint8 images when they take <= 256 MiB), True or False.
    """

    factor_names = FACTOR_NAMES

    def __init__(self, size: int = 64, grid: Union[None, str, Mapping[str, Sequence[int]]] = None,
                 cache: Union[str, bool] = "auto"):
        if not isinstance(size, int) or isinstance(size, bool) or size < 4:
            raise ValueError(f"size must be an int >= 4, got {size!r}")
        if cache not in ("auto", True, False):
            raise ValueError(f"cache must be 'auto', True or False, got {cache!r}")
        self.size = size
        self.grid_classes = _parse_grid(grid)
        self.factor_sizes = tuple(int(c.numel()) for c in self.grid_classes)
        self._strides = _strides(self.factor_sizes)
        self._len = math.prod(self.factor_sizes)
        # full-grid class -> position in this grid's class list (-1: not on the grid)
        self._position = []
        for f, classes in enumerate(self.grid_classes):
            pos = torch.full((FULL_SIZES[f],), -1, dtype=torch.long)
            pos[classes] = torch.arange(classes.numel())
            self._position.append(pos)
        self._cache_enabled = cache is True or (cache == "auto" and self._len * size * size <= _CACHE_AUTO_BYTES)
        self._cache: Optional[Tensor] = None

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int):
        if not -self._len <= i < self._len:
            raise IndexError(f"index {i} is out of range for {self._len} images")
        classes = self.classes(torch.tensor([i % self._len]))
        return self.images(classes)[0], classes[0]

    def __repr__(self) -> str:
        return f"DSprites(size={self.size}, factor_sizes={self.factor_sizes}, len={self._len})"

    def classes(self, index) -> Tensor:
        """Grid indices `[N]` → full-grid classes `[N, 5]`."""
        index = torch.as_tensor(index, dtype=torch.long).flatten()
        if index.numel() and bool(((index < 0) | (index >= self._len)).any()):
            raise ValueError(f"index must lie in 0..{self._len - 1}")
        pos = (index.unsqueeze(1) // self._strides) % torch.tensor(self.factor_sizes)
        return torch.stack([self.grid_classes[f][pos[:, f]] for f in range(len(FULL_SIZES))], dim=1)

    def index(self, classes) -> Tensor:
        """Full-grid classes `[N, 5]` → indices in this grid `[N]` (posY fastest)."""
        classes = check_classes("classes", classes)
        pos = torch.stack([self._position[f][classes[:, f]] for f in range(len(FULL_SIZES))], dim=1)
        if bool((pos < 0).any()):
            row, col = (int(i) for i in (pos < 0).nonzero()[0])
            raise ValueError(f"classes[{row}] has {FACTOR_NAMES[col]} class {int(classes[row, col])}, which is not "
                             f"on this grid ({self.grid_classes[col].tolist()})")
        return (pos * self._strides).sum(1)

    def sample_factors(self, num: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """`num` class vectors `[num, 5]`, each factor uniform over this grid's classes."""
        if not isinstance(num, int) or num < 0:
            raise ValueError(f"num must be a non-negative int, got {num!r}")
        cols = [c[torch.randint(c.numel(), (num,), generator=generator)] for c in self.grid_classes]
        return torch.stack(cols, dim=1)

    def images(self, classes) -> Tensor:
        """Images of full-grid classes `[N, 5]` → float32 `[N, 1, S, S]` (cached grids gather)."""
        classes = check_classes("classes", classes)
        if self._cache_enabled:
            pos = torch.stack([self._position[f][classes[:, f]] for f in range(len(FULL_SIZES))], dim=1)
            if not bool((pos < 0).any()):
                return self._images_cache()[(pos * self._strides).sum(1)].unsqueeze(1).float()
        return render(classes, self.size)

    def _images_cache(self) -> Tensor:
        if self._cache is None:
            self._cache = render(self.classes(torch.arange(self._len)), self.size)[:, 0].to(torch.uint8)
        return self._cache

    def latents_values(self, classes) -> Tensor:
        """Official `latents_values` rows `[N, 6]` (color value 1 first) of full-grid classes."""
        classes = check_classes("classes", classes)
        cols = [torch.ones(classes.shape[0], dtype=torch.float64)]
        cols += [factor_values(f)[classes[:, f]] for f in range(len(FULL_SIZES))]
        return torch.stack(cols, dim=1)

    def to_npz(self, path) -> None:
        """Write the grid with the official field names (imgs uint8 `[N, S, S]`, latents_values,
        latents_classes `[N, 6]`, metadata), streaming images in chunks (the full grid fits on disk,
        not in memory). Load with `np.load(path, allow_pickle=True)` as the original."""
        n, s = self._len, self.size
        metadata = {"description": "pyfastlab procedural dSprites-compatible sprites (not pixel-identical)",
                    "latents_names": ("color",) + FACTOR_NAMES, "latents_sizes": np.array((1,) + FULL_SIZES),
                    "grid_classes": [c.tolist() for c in self.grid_classes], "image_size": s}
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("imgs.npy", "w", force_zip64=True) as fp:
                np.lib.format.write_array_header_2_0(fp, {"descr": "|u1", "fortran_order": False, "shape": (n, s, s)})
                for start in range(0, n, _NPZ_CHUNK):
                    idx = torch.arange(start, min(n, start + _NPZ_CHUNK))
                    fp.write(self.images(self.classes(idx))[:, 0].to(torch.uint8).numpy().tobytes())
            classes = self.classes(torch.arange(n))
            full = torch.cat([torch.zeros(n, 1, dtype=torch.long), classes], dim=1)
            for name, array in (("latents_classes", full.numpy()), ("latents_values", self.latents_values(classes).numpy()),
                                ("metadata", np.array(metadata, dtype=object))):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, array, allow_pickle=True)
                zf.writestr(name + ".npy", buffer.getvalue())
