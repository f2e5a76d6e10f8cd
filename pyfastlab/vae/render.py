"""Vectorised rendering of dSprites-compatible sprites (vae.md 4.5).

The geometry is evaluated in float64 for a whole batch of class vectors at once: every pixel
centre is rotated into the sprite's frame and tested against the shape's implicit inequality.
Images are not pixel-identical to DeepMind's (their renderer is unpublished); the grid, factor
values and index order are.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FULL_SIZES = (3, 6, 40, 32, 32)
# Small chunks keep the float64 temporaries in cache (about 2x faster than 1024-image chunks).
# Sprite centre = 0.1875 + 0.625 * position value; radius = 0.15625 * scale value: every shape
# lies in its unit disc, so an S = 64 image keeps an empty 2-pixel frame.
_CENTRE_OFFSET, _CENTRE_SPAN, _RADIUS = 0.1875, 0.625, 0.15625
# Orientation values are linspace(0, 2 pi, 40): classes 0 and 39 are the same angle, so the
# renderer uses 39 distinct angles (class mod 39).
_DISTINCT_ANGLES = 39


def factor_values(factor: int) -> Tensor:
    """The official float values of one factor's classes (float64), as in latents_values."""
    if factor == 0:
        return torch.arange(1, 4, dtype=torch.float64)        # 1 square, 2 ellipse, 3 heart
    if factor == 1:
        return torch.linspace(0.5, 1.0, 6, dtype=torch.float64)
    if factor == 2:
        return torch.linspace(0.0, 2 * math.pi, 40, dtype=torch.float64)
    return torch.linspace(0.0, 1.0, 32, dtype=torch.float64)


def check_classes(name: str, classes) -> Tensor:
    """[N, 5] integer classes of the full grid (a single [5] vector is promoted)."""
    classes = torch.as_tensor(classes)
    if classes.dtype.is_floating_point or classes.dtype == torch.bool or classes.is_complex():
        raise ValueError(f"{name} must hold integer class indices, got {classes.dtype}")
    if classes.dim() == 1:
        classes = classes.unsqueeze(0)
    if classes.dim() != 2 or classes.shape[1] != len(FULL_SIZES):
        raise ValueError(f"{name} must be [N, 5] classes (shape, scale, orientation, posX, posY), "
                         f"got shape {tuple(classes.shape)}")
    classes = classes.long()
    if classes.numel():
        sizes = torch.tensor(FULL_SIZES)
        bad = (classes < 0) | (classes >= sizes)
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name}[{row}, {col}] = {int(classes[row, col])} is outside the {FACTOR_NAMES[col]} "
                             f"classes 0..{FULL_SIZES[col] - 1}")
    return classes


def _inside(shape: int, u: Tensor, v: Tensor) -> Tensor:
    """Which (u, v) points (sprite frame, unit radius) lie inside the shape."""
    if shape == 0:
        return torch.maximum(u.abs(), v.abs()) <= 1.0 / math.sqrt(2.0)
    if shape == 1:
        return u * u + 4.0 * v * v <= 1.0
    p2, q = (1.25 * u).square_(), 0.25 - 1.25 * v
    return (p2 + q * q - 1.0) ** 3 - p2 * q ** 3 <= 0.0


def render(classes, size: int = 64, *, chunk: int = 256) -> Tensor:
    """Binary sprites for full-grid classes `[N, 5]` → float32 `[N, 1, size, size]` in {0, 1}."""
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"size must be an int >= 4, got {size!r}")
    classes = check_classes("classes", classes)
    out = torch.empty(classes.shape[0], 1, size, size)
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    y, x = centres.view(1, size, 1), centres.view(1, 1, size)
    scale_v, pos_v = factor_values(1), factor_values(3)
    for start in range(0, classes.shape[0], chunk):
        c = classes[start:start + chunk]
        rho = (_RADIUS * scale_v[c[:, 1]]).view(-1, 1, 1)
        theta = 2 * math.pi * (c[:, 2] % _DISTINCT_ANGLES).double() / _DISTINCT_ANGLES
        cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
        dx = x - (_CENTRE_OFFSET + _CENTRE_SPAN * pos_v[c[:, 3]]).view(-1, 1, 1)
        dy = y - (_CENTRE_OFFSET + _CENTRE_SPAN * pos_v[c[:, 4]]).view(-1, 1, 1)
        u = (cos * dx + sin * dy) / rho
        v = (-sin * dx + cos * dy) / rho
        view = out[start:start + chunk, 0]
        for shape in range(3):   # one predicate per row: group the chunk's rows by shape
            rows = (c[:, 0] == shape).nonzero().squeeze(1)
            if rows.numel():
                view[rows] = _inside(shape, u[rows], v[rows]).float()
    return out
