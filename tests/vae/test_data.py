"""Procedural dSprites: grid, index order, geometry known answers, caching, npz export, bad input."""
import math

import numpy as np
import pytest
import torch

from pyfastlab.vae import DSprites, render
from pyfastlab.vae.data import DEMO_GRID

KNOWN = [(0, 5, 0, 15, 15), (1, 5, 0, 15, 15), (2, 5, 0, 15, 15), (2, 0, 10, 0, 31), (1, 3, 20, 31, 0),
         (0, 2, 39, 7, 24)]


def test_grid_sizes():
    assert len(DSprites()) == 737280
    assert DSprites().factor_sizes == (3, 6, 40, 32, 32)
    demo = DSprites(grid="demo")
    assert len(demo) == 5760 and demo.factor_sizes == (3, 3, 10, 8, 8)


def test_full_grid_index_order_matches_official_bases():
    ds = DSprites()
    gen = torch.Generator().manual_seed(0)
    classes = ds.sample_factors(500, gen)
    bases = torch.tensor([245760, 40960, 1024, 32, 1])
    assert torch.equal(ds.index(classes), (classes * bases).sum(1))
    assert torch.equal(ds.classes(ds.index(classes)), classes)
    assert ds.classes(torch.tensor([1]))[0].tolist() == [0, 0, 0, 0, 1]   # posY is fastest


def test_reduced_grid_round_trip_and_order():
    ds = DSprites(size=16, grid="demo")
    idx = torch.arange(len(ds))
    classes = ds.classes(idx)
    assert torch.equal(ds.index(classes), idx)
    assert classes[:8, 4].tolist() == DEMO_GRID["posY"] and bool((classes[:8, :4] == 0).all())
    full = DSprites(size=16).index(classes)
    assert bool((full[1:] > full[:-1]).all())                 # same order as the full grid


@pytest.mark.parametrize("size,counts", [(64, [196, 156, 232, 59, 104, 100]), (32, [49, 40, 58, 14, 26, 25])])
def test_pixel_counts_known_answers(size, counts):
    images = render(torch.tensor(KNOWN), size)
    assert images.shape == (6, 1, size, size) and images.dtype == torch.float32
    assert images.sum((1, 2, 3)).tolist() == counts


def test_orientation_0_and_39_render_identically():
    gen = torch.Generator().manual_seed(1)
    classes = DSprites().sample_factors(64, gen)
    a, b = classes.clone(), classes.clone()
    a[:, 2], b[:, 2] = 0, 39
    assert torch.equal(render(a), render(b))
    c = a.clone()
    c[:, 2] = 10
    assert not torch.equal(render(a[c[:, 0] == 2]), render(c[c[:, 0] == 2]))   # hearts turn


def test_empty_outer_frame_at_64_and_binary():
    ds = DSprites()
    # the extreme positions and largest scale, every shape and some orientations
    classes = torch.tensor([[s, 5, o, x, y] for s in range(3) for o in (0, 5, 13, 30) for x in (0, 31)
                            for y in (0, 31)])
    images = ds.images(classes)[:, 0]
    assert set(images.unique().tolist()) <= {0.0, 1.0}
    frame = torch.ones(64, 64, dtype=torch.bool)
    frame[2:-2, 2:-2] = False
    assert float(images[:, frame].sum()) == 0.0
    assert bool((images.sum((1, 2)) > 0).all())


def test_shapes_grow_with_scale_and_move_with_position():
    small, large = render(torch.tensor([[1, 0, 0, 10, 10]])), render(torch.tensor([[1, 5, 0, 10, 10]]))
    assert large.sum() > 3 * small.sum()
    left, right = render(torch.tensor([[0, 3, 0, 0, 16]]))[0, 0], render(torch.tensor([[0, 3, 0, 31, 16]]))[0, 0]
    cols = torch.arange(64).double()
    assert (right.sum(0) * cols).sum() / right.sum() > (left.sum(0) * cols).sum() / left.sum() + 30   # posX moves x


def test_cache_matches_rendering_and_getitem():
    cached, plain = DSprites(size=32, grid="demo"), DSprites(size=32, grid="demo", cache=False)
    idx = torch.randperm(len(cached), generator=torch.Generator().manual_seed(2))[:300]
    classes = cached.classes(idx)
    assert torch.equal(cached.images(classes), plain.images(classes))
    image, c = cached[int(idx[0])]
    assert image.shape == (1, 32, 32) and torch.equal(c, classes[0])
    assert torch.equal(cached[-1][1], cached.classes(torch.tensor([len(cached) - 1]))[0])
    off_grid = torch.tensor([[0, 1, 1, 1, 1]])                 # not on the demo grid: rendered, not cached
    assert torch.equal(cached.images(off_grid), render(off_grid, 32))


def test_sample_factors_uniform_on_grid_and_seeded():
    ds = DSprites(grid="demo")
    a = ds.sample_factors(3000, torch.Generator().manual_seed(3))
    b = ds.sample_factors(3000, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    for f, name in enumerate(ds.factor_names):
        values, counts = a[:, f].unique(return_counts=True)
        assert values.tolist() == DEMO_GRID[name]
        expected = 3000 / len(DEMO_GRID[name])
        assert counts.min() > 0.75 * expected and counts.max() < 1.25 * expected


def test_latents_values_are_official():
    ds = DSprites()
    values = ds.latents_values(torch.tensor([[2, 5, 39, 31, 0]]))[0]
    assert values.tolist() == pytest.approx([1.0, 3.0, 1.0, 2 * math.pi, 1.0, 0.0])


def test_to_npz_has_official_fields(tmp_path):
    ds = DSprites(size=16, grid={"shape": [0, 2], "scale": [5], "orientation": [0, 7], "posX": [3, 30],
                                 "posY": [0, 1, 31]})
    path = tmp_path / "mini.npz"
    ds.to_npz(path)
    with np.load(path, allow_pickle=True) as npz:
        assert set(npz.files) == {"imgs", "latents_values", "latents_classes", "metadata"}
        imgs, classes, values = npz["imgs"], npz["latents_classes"], npz["latents_values"]
        metadata = npz["metadata"].item()
    assert imgs.dtype == np.uint8 and imgs.shape == (len(ds), 16, 16)
    assert classes.shape == (len(ds), 6) and bool((classes[:, 0] == 0).all())
    assert torch.equal(torch.from_numpy(classes[:, 1:]), ds.classes(torch.arange(len(ds))))
    assert np.array_equal(imgs, ds.images(torch.from_numpy(classes[:, 1:]))[:, 0].numpy().astype(np.uint8))
    assert values.shape == (len(ds), 6) and values[0, 0] == 1.0
    assert metadata["latents_names"][1] == "shape"


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=2), "size"), (dict(grid="tiny"), "grid"), (dict(grid={"colour": [0]}), "unknown factors"),
    (dict(grid={"scale": [6]}), "scale"), (dict(grid={"posX": []}), "empty"), (dict(grid={"shape": [1, 1]}), "repeats"),
    (dict(cache="yes"), "cache")])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSprites(**kwargs)


def test_bad_classes_and_indices():
    ds = DSprites(grid="demo")
    with pytest.raises(ValueError, match="orientation"):
        ds.images(torch.tensor([[0, 0, 40, 0, 0]]))
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        ds.images(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        ds.images(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="not on this grid"):
        ds.index(torch.tensor([[0, 1, 0, 0, 0]]))
    with pytest.raises(ValueError, match="index"):
        ds.classes(torch.tensor([len(ds)]))
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(ValueError, match="num"):
        ds.sample_factors(-1)
