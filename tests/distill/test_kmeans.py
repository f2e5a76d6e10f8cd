"""Streaming Lloyd k-means against a textbook Lloyd in float64, and its documented properties."""
import pytest
import torch

from pyfastlab.distill import kmeans
from pyfastlab.reference import distill as ref


def blobs(n_per=60, k=4, width=6, spread=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(k, width, generator=gen)
    x = centres.repeat_interleave(n_per, 0) + spread * torch.randn(k * n_per, width, generator=gen)
    return x[torch.randperm(x.shape[0], generator=gen)], centres


def stream(x, size):
    return lambda: iter(x.split(size))


def test_matches_textbook_lloyd_from_the_same_start():
    x, _ = blobs(spread=3.0, seed=1)  # overlapping blobs: assignments move for several iterations
    init = x[:5].clone()
    for n_iter in (0, 1, 2, 5):
        result = kmeans(x, 5, n_iter=n_iter, init=init, batch_size=37)
        centroids, labels, inertia = ref.lloyd(x.double(), init.double(), n_iter)
        torch.testing.assert_close(result.centroids.double(), centroids, atol=1e-5, rtol=1e-5)
        assert torch.equal(result.assignments, labels)
        assert result.inertia == pytest.approx(inertia, rel=1e-5)
        assert torch.equal(result.counts, torch.bincount(labels, minlength=5))
        assert result.centroids.dtype == torch.float32


def test_kmeans_pp_recovers_well_separated_blobs():
    x, centres = blobs(seed=2)
    result = kmeans(x, 4, seed=0)
    nearest = torch.cdist(result.centroids, centres).min(1)
    assert nearest.values.max() < 0.2 and sorted(nearest.indices.tolist()) == [0, 1, 2, 3]
    assert sorted(result.counts.tolist()) == [60, 60, 60, 60]


def test_sample_init_starts_from_distinct_rows():
    x, _ = blobs(seed=2)
    start = kmeans(x, 7, init="sample", n_iter=0, seed=5).centroids
    matches = (start[:, None, :] == x[None]).all(-1)
    assert matches.any(1).all() and len({tuple(r) for r in start.tolist()}) == 7


def test_inertia_never_increases_with_more_iterations():
    x, _ = blobs(spread=4.0, seed=3)
    inertias = [kmeans(x, 6, n_iter=n, seed=1).inertia for n in range(6)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(inertias, inertias[1:])), inertias
    assert inertias[-1] < inertias[0]


@pytest.mark.parametrize("init", ["k-means++", "sample"])
def test_tensor_and_stream_inputs_give_identical_centroids_and_reruns_are_bit_identical(init):
    x, _ = blobs(spread=2.0, seed=4)
    a = kmeans(x, 5, init=init, seed=3, batch_size=64, init_size=100)
    b = kmeans(stream(x, 64), 5, init=init, seed=3, batch_size=64, init_size=100)
    c = kmeans(x, 5, init=init, seed=3, batch_size=64, init_size=100)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.counts, b.counts)
    # other batch boundaries: the same sample and assignments; sums rounded in another order
    d = kmeans(stream(x, 29), 5, init=init, seed=3, batch_size=64, init_size=100)
    assert torch.equal(a.counts, d.counts)
    torch.testing.assert_close(a.centroids, d.centroids, atol=1e-5, rtol=1e-6)
    assert torch.equal(a.centroids, c.centroids) and torch.equal(a.assignments, c.assignments)
    assert b.assignments is None and a.assignments.shape == (x.shape[0],)
    assert not torch.equal(a.centroids, kmeans(x, 5, init=init, seed=4, init_size=100).centroids)


def test_empty_cluster_keeps_its_centroid():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0]])
    init = torch.tensor([[0.0, 0.0], [10.0, 10.0], [100.0, 100.0]])
    result = kmeans(x, 3, init=init, n_iter=3)
    assert result.counts.tolist() == [2, 2, 0]
    assert torch.equal(result.centroids[2], init[2])
    torch.testing.assert_close(result.centroids[:2], torch.tensor([[0.05, 0.0], [10.05, 10.0]]))


def test_duplicate_rows_and_ties():
    x = torch.zeros(6, 3)
    x[3:] = 1.0
    result = kmeans(x, 3, seed=0)  # only two distinct rows: k-means++ falls back to any unchosen row
    assert result.counts.sum() == 6 and result.inertia == 0.0
    tie = kmeans(torch.zeros(4, 2), 2, init=torch.zeros(2, 2), n_iter=1)
    assert tie.assignments.tolist() == [0, 0, 0, 0]  # ties go to the lowest index


def test_inputs_are_not_modified():
    x, _ = blobs(seed=5)
    before = x.clone()
    kmeans(x, 4)
    assert torch.equal(x, before)


def test_bad_input():
    x, _ = blobs(n_per=2, k=2)
    with pytest.raises(ValueError, match="k = 5 centroids need at least k rows, the data has N = 4"):
        kmeans(x, 5)
    with pytest.raises(ValueError, match="N = 4"):
        kmeans(stream(x, 3), 5)
    for k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="k must be a positive int"):
            kmeans(x, k)
    with pytest.raises(ValueError, match="init must be one of"):
        kmeans(x, 2, init="random")
    with pytest.raises(ValueError, match=r"init as a tensor must be \[k=2, F\]"):
        kmeans(x, 2, init=torch.zeros(3, 6))
    with pytest.raises(ValueError, match="init has F = 5 features"):
        kmeans(x, 2, init=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="earlier batches had 6"):
        kmeans(lambda: iter([x, torch.zeros(2, 5)]), 2)
    with pytest.raises(ValueError, match="data is empty"):
        kmeans(lambda: iter([]), 2)
    with pytest.raises(ValueError, match="data must be"):
        kmeans([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match="init_size must be >= k"):
        kmeans(x, 3, init_size=2)
    with pytest.raises(ValueError, match="n_iter"):
        kmeans(x, 2, n_iter=-1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_data_is_rejected_naming_the_row(bad):
    x, _ = blobs(n_per=10, k=2)
    x[13, 2] = bad
    with pytest.raises(ValueError, match="data has a non-finite value .* in row 13"):
        kmeans(x, 2)
    with pytest.raises(ValueError, match="data batch 1 has a non-finite value .* in row 3"):
        kmeans(stream(x, 10), 2)
    with pytest.raises(ValueError, match="init has a non-finite value .* in row 1"):
        kmeans(blobs(n_per=10, k=2)[0], 2, init=torch.tensor([[0.0] * 6, [bad] + [0.0] * 5]))


def test_a_stream_that_turns_non_finite_on_a_later_pass_is_caught():
    x, _ = blobs(n_per=10, k=2)
    passes = []

    def data():
        passes.append(None)
        batch = x.clone()
        if len(passes) == 3:  # the second Lloyd pass reads a NaN
            batch[5, 0] = float("nan")
        return iter(batch.split(7))

    with pytest.raises(ValueError, match="data batch 0 has a non-finite value .* in row 5"):
        kmeans(data, 2, n_iter=3)
