"""Metrics: known answers (factors as codes score at the top, independent noise at chance),
the pieces against independent implementations, protocols, determinism and bad input."""
import math
import sys

import numpy as np
import pytest
import torch

from pyfastlab.vae import DSprites
from pyfastlab.vae.metrics import (PROTOCOLS, FactorsAsObservations, beta_vae_score, dci, dci_from_importance,
                                   factor_vae_score, fit_tree, multi_factor_vote_score, mutual_information_gap,
                                   sample_codes, sap_score)
from pyfastlab.vae.metrics.mig import discretize, mutual_information_matrix

DEMO = FactorsAsObservations(DSprites(size=8, grid="demo", cache=False))   # observations = classes


def identity(c):
    """Factors as codes; dims 5-9 constant."""
    return torch.cat([c, torch.zeros_like(c)], dim=1)


class Noise:
    """N(0, I) codes independent of the factors (a fresh seeded stream)."""

    def __init__(self, dims=10, seed=99):
        self.gen, self.dims = torch.Generator().manual_seed(seed), dims

    def __call__(self, c):
        return torch.randn(c.shape[0], self.dims, generator=self.gen, dtype=torch.float64)


def identity_plus_noise(c):
    return torch.cat([c, Noise(5, int(c.sum()) % 997)(c)], dim=1)


# -- known answers (vae.md 5) --------------------------------------------------------------------

@pytest.mark.parametrize("encode", [identity, identity_plus_noise], ids=["identity", "identity+noise"])
def test_factor_vae_identity_is_one(encode):
    r = factor_vae_score(DEMO, encode, protocol="demo")
    assert r.score == 1.0 and r["train_accuracy"] == 1.0
    assert r.details["num_active_dims"] == (5 if encode is identity else 10)


def test_factor_vae_random_is_chance():
    r = factor_vae_score(DEMO, Noise(), protocol="demo", num_eval=1000)
    assert abs(r.score - 0.2) <= 0.05


def test_factor_vae_reference_protocol_scores_training_votes():
    r = factor_vae_score(DEMO, identity, protocol="reference")
    assert r.score == 1.0 and r.params == dict(PROTOCOLS["factor_vae"]["reference"])
    assert r.details["eval_votes"] is r.details["train_votes"]


def test_factor_vae_no_active_dims_scores_zero():
    r = factor_vae_score(DEMO, lambda c: torch.zeros(c.shape[0], 4, dtype=torch.float64), protocol="demo")
    assert r.score == 0.0 and r.details["num_active_dims"] == 0


def test_factor_vae_permuted_dims_still_one_and_mixed_dims_lower():
    perm = lambda c: identity(c)[:, [7, 3, 0, 9, 1, 4, 2, 8, 6, 5]]
    assert factor_vae_score(DEMO, perm, protocol="demo").score == 1.0
    mixed = lambda c: torch.stack([c[:, 0] + c[:, 1], c[:, 1] - c[:, 0], c[:, 2], c[:, 3] + c[:, 4], c[:, 4]], 1)
    assert factor_vae_score(DEMO, mixed, protocol="demo").score < 0.95


@pytest.mark.parametrize("encode", [identity, identity_plus_noise], ids=["identity", "identity+noise"])
def test_beta_vae_identity_top(encode):
    assert beta_vae_score(DEMO, encode, protocol="demo").score >= 0.99


def test_beta_vae_random_is_chance():
    r = beta_vae_score(DEMO, Noise(), protocol="demo", num_eval=1000)
    assert abs(r.score - 0.2) <= 0.05
    assert "LogisticRegression" in r.details["classifier"]


def test_mig_identity_and_random():
    codes, classes = sample_codes(DEMO, identity, 10000)
    assert mutual_information_gap(codes, classes).score >= 0.99
    codes, classes = sample_codes(DEMO, identity_plus_noise, 10000)
    assert mutual_information_gap(codes, classes).score >= 0.99
    codes, classes = sample_codes(DEMO, Noise(), 10000)
    assert mutual_information_gap(codes, classes).score <= 0.02


def test_mig_full_grid_orientation_needs_enough_bins():
    full = FactorsAsObservations(DSprites(size=8, cache=False))
    codes, classes = sample_codes(full, identity, 50000)   # 40 x 32 classes: plug-in bias needs many points
    gaps = mutual_information_gap(codes, classes, num_bins=20, num_points=50000).details["per_factor"]
    assert float(gaps[2]) < 0.85                            # 40 orientations in 20 bins: about ln 20 / ln 40
    assert mutual_information_gap(codes, classes, num_bins=40, num_points=50000).score >= 0.99


def test_dci_identity_and_random_tree():
    codes, classes = sample_codes(DEMO, identity_plus_noise, 3000)
    r = dci(codes, classes, protocol="demo")
    assert r["disentanglement"] >= 0.999 and r["completeness"] >= 0.999 and r["informativeness"] == 1.0
    codes, classes = sample_codes(DEMO, Noise(), 15000)
    r = dci(codes, classes, model="tree")                   # dlib's sizes with the fast tree
    assert r["disentanglement"] <= 0.05 and r["completeness"] <= 0.05
    assert r.params == dict(num_train=10000, num_test=5000, model="tree")


def test_dci_default_model_is_gbt_for_dlib_and_tree_otherwise(monkeypatch):
    pytest.importorskip("sklearn.ensemble")
    gen = torch.Generator().manual_seed(4)
    classes = torch.randint(0, 3, (150, 2), generator=gen)
    codes = torch.cat([classes.double(), torch.randn(150, 1, generator=gen, dtype=torch.float64)], 1)
    r = dci(codes, classes, num_train=100, num_test=50)     # protocol="dlib": GradientBoostingClassifier
    assert r.params["model"] == "gbt"
    assert torch.equal(r["importance"], dci(codes, classes, model="gbt", num_train=100, num_test=50)["importance"])
    assert dci(codes, classes, protocol="demo", num_train=100, num_test=50).params["model"] == "tree"
    assert dci(codes, classes, model="tree", num_train=100, num_test=50).params["model"] == "tree"

    def no_sklearn(name, metric):
        raise ImportError(f"{metric} needs scikit-learn: pip install 'pyfastlab[metrics]'")
    monkeypatch.setattr(sys.modules["pyfastlab.vae.metrics.dci"], "sklearn_module", no_sklearn)
    with pytest.raises(ImportError, match=r"pip install .*model='tree'"):
        dci(codes, classes, num_train=100, num_test=50)


def test_dci_rotated_pair_loses_disentanglement():
    c45 = math.sqrt(0.5)
    rotated = lambda c: torch.stack([c45 * (c[:, 0] - c[:, 3]), c[:, 1], c[:, 2], c45 * (c[:, 0] + c[:, 3]), c[:, 4]], 1)
    codes, classes = sample_codes(DEMO, rotated, 3000)
    r = dci(codes, classes, protocol="demo")
    assert 0.5 < r["disentanglement"] < 0.97 and r["informativeness"] > 0.9


@pytest.mark.slow
def test_dci_gbt_known_answers():
    codes, classes = sample_codes(DEMO, identity, 1500)
    r = dci(codes, classes, model="gbt", num_train=1000, num_test=500)
    assert r["disentanglement"] >= 0.999 and r["completeness"] >= 0.999 and r["informativeness"] == 1.0
    codes, classes = sample_codes(DEMO, Noise(), 1500)
    r = dci(codes, classes, model="gbt", num_train=1000, num_test=500)
    assert r["disentanglement"] <= 0.1 and r["completeness"] <= 0.1


def test_sap_orders_identity_above_noise():
    good = sap_score(*sample_codes(DEMO, identity, 3000), protocol="demo")
    bad = sap_score(*sample_codes(DEMO, Noise(), 3000), protocol="demo")
    assert good.score > 0.25 and bad.score < 0.03 and good.score > 10 * bad.score
    cont = sap_score(*sample_codes(DEMO, identity, 3000), protocol="demo", continuous=True)
    assert cont.score == pytest.approx(1.0, abs=0.01)       # R^2 of a factor on itself is 1, on the others ~0


def test_mfvm_identity_is_one_and_random_low():
    r = multi_factor_vote_score(DEMO, identity, protocol="demo")
    assert r.details["per_k"] == {2: 1.0, 3: 1.0, 4: 1.0} and r.score == 1.0
    r = multi_factor_vote_score(DEMO, Noise(), 2, protocol="demo")
    assert r.score < 0.3
    assert multi_factor_vote_score(DEMO, lambda c: identity(c)[:, :1].repeat(1, 2), 3, protocol="demo").score == 0.0


def test_mfvm_missing_factor_lowers_only_its_keys():
    """Factor 4 has no dimension: the 4 of 10 pairs that fix it vote for a random second dimension."""
    codes = lambda c: torch.cat([c[:, :4], Noise(4, int(c.sum()) % 991)(c)], dim=1)
    r = multi_factor_vote_score(DEMO, codes, 2, protocol="demo")
    assert 0.6 < r.score < 0.85 and r.details["keys_seen"][2] == 10


# -- pieces against independent implementations ---------------------------------------------------

def test_discretize_matches_numpy_histogram_digitize():
    gen = torch.Generator().manual_seed(0)
    codes = torch.cat([torch.randn(500, 3, generator=gen, dtype=torch.float64), torch.full((500, 1), 2.0)], 1)
    got = discretize(codes, 20)
    for d in range(3):
        x = codes[:, d].numpy()
        expected = np.digitize(x, np.histogram(x, 20)[1][:-1]) - 1
        assert np.array_equal(got[:, d].numpy(), expected)
    assert bool((got[:, 3] == got[0, 3]).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_discretize_bins_values_on_edges_as_numpy(dtype):
    """Values exactly on numpy.histogram's edges (and one ulp either side) land in np.digitize's bin."""
    gen = torch.Generator().manual_seed(5)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    off_linspace = 0
    for num_bins in (7, 20, 33):
        lo = np_dtype(10 * float(torch.randn(1, generator=gen)))
        hi = np_dtype(10 * float(torch.rand(1, generator=gen)) + 11)
        edges = np.histogram(np.array([lo, hi], dtype=np_dtype), num_bins)[1]
        x = np.concatenate([edges, np.nextafter(edges, np_dtype(np.inf)), np.nextafter(edges, np_dtype(-np.inf))])
        x = np.clip(x, lo, hi)[torch.randperm(3 * num_bins + 3, generator=gen).numpy()]
        got = discretize(torch.from_numpy(x).unsqueeze(1), num_bins)[:, 0].numpy()
        assert np.array_equal(got, np.digitize(x, np.histogram(x, num_bins)[1][:-1]) - 1), num_bins
        # the case tells numpy's lo + i * ((hi - lo) / n) from lo + (hi - lo) * (i / n)
        off_linspace += int((edges != lo + (hi - lo) * (np.arange(num_bins + 1) / num_bins).astype(np_dtype)).sum())
    assert off_linspace > 0


def test_mutual_information_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(1)
    binned = torch.randint(0, 6, (800, 3), generator=gen)
    labels = torch.stack([binned[:, 0] % 3, torch.randint(0, 4, (800,), generator=gen)], 1)
    mi = mutual_information_matrix(binned, labels, 6, [3, 4])
    for d in range(3):
        for k in range(2):
            assert float(mi[d, k]) == pytest.approx(metrics.mutual_info_score(binned[:, d], labels[:, k]), abs=1e-12)


def test_dci_from_importance_closed_forms():
    d, c, _, _ = dci_from_importance(torch.eye(4))
    assert d == pytest.approx(1.0) and c == pytest.approx(1.0)
    d, c, _, _ = dci_from_importance(torch.ones(4, 4))
    assert d == pytest.approx(0.0, abs=1e-9) and c == pytest.approx(0.0, abs=1e-9)
    d, c, _, _ = dci_from_importance(torch.zeros(3, 2))             # no importance: uniform weights
    assert d == pytest.approx(0.0, abs=1e-9) and c == pytest.approx(0.0, abs=1e-9)
    # one code carrying two factors equally: D = 1 - H_2(1/2, 1/2) = 0 for that code
    r = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    d, c, per_code, per_factor = dci_from_importance(r)
    assert d == pytest.approx(0.0, abs=1e-6) and c == pytest.approx(1.0, abs=1e-6)


def test_tree_learns_thresholds_and_reports_importance():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2000, 3, generator=gen, dtype=torch.float64)
    y = (x[:, 1] > 0.3).long() + (x[:, 1] > 0.7).long()
    tree = fit_tree(x, y, 3)
    assert float((tree.predict(x) == y).double().mean()) > 0.99
    assert int(tree.importances.argmax()) == 1 and float(tree.importances[[0, 2]].sum()) < 0.01
    pure = fit_tree(x, torch.zeros(2000, dtype=torch.long), 1)
    assert pure.feature.tolist() == [-1] and float(pure.importances.sum()) == 0.0


def test_tree_respects_leaf_size_and_depth():
    x = torch.arange(100, dtype=torch.float64).unsqueeze(1)
    y = torch.arange(100) % 2                                 # needs 99 splits: depth 8 and leaves >= 5 stop it
    tree = fit_tree(x, y, 2)
    leaves = tree.feature == -1
    routed = torch.zeros(100, dtype=torch.long)
    node = torch.zeros(100, dtype=torch.long)
    for _ in range(8):
        split = tree.feature[node] >= 0
        node = torch.where(split, tree.left[node] + (x[:, 0] > tree.threshold[node]).long(), node)
    counts = torch.bincount(node, minlength=tree.feature.numel())[leaves]
    assert int(counts[counts > 0].min()) >= 5


# -- protocol, determinism, bad input -------------------------------------------------------------

def test_results_record_protocol_code_and_sizes_and_are_seeded():
    a = factor_vae_score(DEMO, Noise(seed=1), protocol="demo", seed=3)
    b = factor_vae_score(DEMO, Noise(seed=1), protocol="demo", seed=3)
    assert a.score == b.score and a.protocol == "demo" and a.code == "mean"
    assert a.params == PROTOCOLS["factor_vae"]["demo"]
    assert float(a) == a.score


def test_code_sample_uses_the_variance():
    data = FactorsAsObservations(DSprites(size=8, grid="demo", cache=False))
    pair = lambda c: (identity(c), torch.full((c.shape[0], 10), 2 * math.log(3.0), dtype=torch.float64))
    mean = factor_vae_score(data, pair, protocol="demo", code="mean")
    sample = factor_vae_score(data, pair, protocol="demo", code="sample")
    assert mean.score == 1.0 and sample.code == "sample" and sample.score < 1.0
    with pytest.raises(ValueError, match="code='sample' needs encode"):
        factor_vae_score(data, identity, protocol="demo", code="sample")


def test_too_few_samples_and_bad_arguments():
    codes, classes = sample_codes(DEMO, identity, 500)
    with pytest.raises(ValueError, match="too few for the protocol"):
        mutual_information_gap(codes, classes)                  # dlib wants 10000 points
    with pytest.raises(ValueError, match="too few for the protocol"):
        dci(codes, classes, protocol="demo")
    with pytest.raises(ValueError, match="too few for the protocol"):
        sap_score(codes, classes)
    with pytest.raises(ValueError, match="too few"):
        factor_vae_score(DEMO, identity, batch_size=1)
    with pytest.raises(ValueError, match="too few"):
        multi_factor_vote_score(DEMO, identity, 2, num_votes=3)
    with pytest.raises(ValueError, match="too few"):
        beta_vae_score(DEMO, identity, num_train=3)
    with pytest.raises(ValueError, match="protocol"):
        factor_vae_score(DEMO, identity, protocol="disent")
    with pytest.raises(ValueError, match="model"):
        dci(codes, classes, model="lasso", num_train=300, num_test=200)
    with pytest.raises(ValueError, match="rows"):
        mutual_information_gap(codes, classes[:10], num_points=10)
    with pytest.raises(ValueError, match="integer"):
        mutual_information_gap(codes, classes.double(), num_points=100)
    with pytest.raises(ValueError, match="data must provide"):
        factor_vae_score(object(), identity)
    with pytest.raises(ValueError, match="encode must return codes"):
        factor_vae_score(DEMO, lambda c: c.flatten(), protocol="demo")
    with pytest.raises(ValueError, match="k must be"):
        multi_factor_vote_score(DEMO, identity, 7)
