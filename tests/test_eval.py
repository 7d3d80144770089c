"""Retrieval metrics against a brute-force pure-Python reference; kNN and linear probe sanity."""

from __future__ import annotations

import math
import random

import pytest
import torch

from fgssl.eval.knn import weighted_knn_predict
from fgssl.eval.linear import linear_probe, stratified_folds, stratified_split
from fgssl.eval.retrieval import retrieval_metrics
from fgssl.eval.suite import METRIC_KEYS, format_table, write_metrics
from fixtures import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


def brute_force_retrieval(feats, labels, ks=(1, 5)):
    """docs/method.md (evaluation), literally: leave-one-out, cosine; rank-k hit rate; AP = (1/M) sum_k k / r_k;
    every metric over the queries that have at least one other same-class item."""
    x = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in feats]
    n = len(x)
    hits = {k: 0 for k in ks}
    aps = []
    for i in range(n):
        sims = [(sum(a * b for a, b in zip(x[i], x[j])), j) for j in range(n) if j != i]
        sims.sort(key=lambda s: -s[0])
        ranked = [labels[j] for _, j in sims]
        for k in ks:
            if labels[i] in ranked[:k]:
                hits[k] += 1
        r = [pos + 1 for pos, lab in enumerate(ranked) if lab == labels[i]]  # ranks r_k of the M matches
        if r:
            aps.append(sum((k + 1) / rk for k, rk in enumerate(r)) / len(r))
    out = {f"rank{k}": 100.0 * hits[k] / len(aps) for k in ks}  # a query without a match never hits
    out["map"] = 100.0 * sum(aps) / len(aps)
    out["queries"], out["no_match"] = float(len(aps)), float(n - len(aps))
    return out


def _random_problem(n, d, classes, seed, spread=0.0):
    rng = random.Random(seed)
    centres = [[rng.gauss(0, 1) for _ in range(d)] for _ in range(classes)]
    labels = [rng.randrange(classes) for _ in range(n)]
    feats = [[spread * centres[y][k] + rng.gauss(0, 1) for k in range(d)] for y in labels]
    return feats, labels


@pytest.mark.parametrize("n,d,classes,seed,spread", [
    (40, 8, 4, 0, 0.0),    # pure noise
    (57, 16, 5, 1, 1.0),   # partly clustered
    (33, 4, 3, 2, 3.0),    # strongly clustered
])
@pytest.mark.parametrize("chunk", [1, 7, 16, 1024])
def test_retrieval_matches_brute_force(n, d, classes, seed, spread, chunk):
    feats, labels = _random_problem(n, d, classes, seed, spread)
    want = brute_force_retrieval(feats, labels)
    # features are scaled arbitrarily: cosine must not care
    scale = torch.tensor([[1.0 + 3 * (i % 4)] for i in range(n)])
    got = retrieval_metrics(torch.tensor(feats) * scale, torch.tensor(labels), chunk=chunk)
    assert set(got) == {"rank1", "rank5", "map", "queries", "no_match"}
    for k in got:
        assert got[k] == pytest.approx(want[k], abs=1e-4), (k, chunk)


def test_retrieval_hand_example():
    # unit vectors at angles a0=0, a1=10, b0=21, b1=170 degrees (no ties)
    ang = [0, 10, 21, 170]
    feats = torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in ang])
    labels = torch.tensor([0, 0, 1, 1])
    # query a0: a1, b0, b1 -> hit@1, AP = 1
    # query a1: a0 (10), b0 (11), b1 -> hit@1, AP = 1
    # query b0: a1 (11), a0 (21), b1 (149) -> miss@1, hit@5, its match at rank 3: AP = 1/3
    # query b1: b0 (149), a1 (160), a0 (170) -> hit@1, AP = 1
    got = retrieval_metrics(feats, labels, chunk=3)
    assert got["rank1"] == pytest.approx(75.0)
    assert got["rank5"] == pytest.approx(100.0)
    assert got["map"] == pytest.approx(100.0 * (1 + 1 + 1 / 3 + 1) / 4)


def test_retrieval_perfect_and_singleton_class():
    feats = torch.tensor([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0], [0.01, 0.99], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])  # class 2 has no other member
    want = brute_force_retrieval(feats.tolist(), labels.tolist())
    got = retrieval_metrics(feats, labels)
    assert got == pytest.approx(want)
    assert got["map"] == pytest.approx(100.0)  # queries without a match do not enter mAP
    assert got["rank1"] == pytest.approx(100.0)  # ... nor rank-k (they used to count as misses: 80)
    assert (got["queries"], got["no_match"]) == (4, 1)


def test_retrieval_on_a_subset_uses_the_same_queries_for_every_metric():
    """A subset where most classes have a single image (issue 18, item 9): rank-k used to count those
    queries as misses while mAP skipped them, so mAP (100) came out above rank-5 (40)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 2, 3, 4, 4, 5, 6, 7])   # classes 1, 2, 3, 5, 6, 7: one image each
    feats = torch.randn(10, 16, generator=g)
    feats[1] = feats[0] + 0.01 * torch.randn(16, generator=g)  # each pair is its own nearest neighbour
    feats[6] = feats[5] + 0.01 * torch.randn(16, generator=g)
    got = retrieval_metrics(feats, labels)
    assert (got["queries"], got["no_match"]) == (4, 6)
    assert got["rank1"] == got["rank5"] == got["map"] == pytest.approx(100.0)
    assert got == pytest.approx(brute_force_retrieval(feats.tolist(), labels.tolist()))


def _clusters(classes=4, per_class=30, d=32, seed=0, noise=0.05, sample_seed=None):
    """Points around ``classes`` random unit centres (fixed by ``seed``); ``sample_seed`` draws new points."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, d, generator=g), dim=1)
    if sample_seed is not None:
        g = torch.Generator().manual_seed(sample_seed)
    y = torch.arange(classes).repeat_interleave(per_class)
    x = centres[y] + noise * torch.randn(len(y), d, generator=g)
    return x, y


def test_knn_on_separable_clusters():
    mx, my = _clusters(seed=0)
    tx, ty = _clusters(seed=0, per_class=10, sample_seed=1)
    pred = weighted_knn_predict(tx, mx, my, 4, k=200, t=0.1, chunk=13)
    assert (pred == ty).float().mean().item() == 1.0
    # the labels come from the memory: shuffled memory labels break it
    g = torch.Generator().manual_seed(0)
    bad = weighted_knn_predict(tx, mx, my[torch.randperm(len(my), generator=g)], 4, k=5, t=0.1)
    assert (bad == ty).float().mean().item() < 0.8


def test_knn_votes_are_weighted():
    # one very close item of class 0 against two far items of class 1: exp(s/t) weighting picks class 0
    mem = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])
    lab = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.1]])
    assert weighted_knn_predict(q, mem, lab, 2, k=3, t=0.1).item() == 0
    # with a very high temperature the votes become nearly uniform: the majority (class 1) wins
    assert weighted_knn_predict(q, mem, lab, 2, k=3, t=100.0).item() == 1
    # k larger than the memory is clipped
    assert weighted_knn_predict(q, mem, lab, 2, k=200, t=0.1).item() == 0


def test_linear_probe_on_separable_clusters():
    x, y = _clusters(classes=5, per_class=20, seed=1, noise=0.1)
    tx, ty = _clusters(classes=5, per_class=10, seed=1, noise=0.1, sample_seed=7)
    out = linear_probe(x, y, tx, ty, 5, wd_grid=(0.0, 1e-3), max_iter=50)
    assert out["top1"] >= 98.0
    assert out["wd"] in (0.0, 1e-3)
    # labels unrelated to the features: no better than chance by a wide margin
    g = torch.Generator().manual_seed(3)
    rnd = linear_probe(x, y[torch.randperm(len(y), generator=g)], tx, ty, 5, wd_grid=(1e-3,), max_iter=50)
    assert rnd["top1"] < 60.0


def test_stratified_split_holds_out_ten_percent_of_each_class():
    y = torch.tensor([0] * 20 + [1] * 10 + [2] * 1)
    fit, held = stratified_split(y)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(31))
    assert (y[held] == 0).sum() == 2 and (y[held] == 1).sum() == 1 and (y[held] == 2).sum() == 0


def test_metrics_file_and_table(tmp_path):
    m = {k: float(i) * 10 for i, k in enumerate(METRIC_KEYS)}
    m["test/linear_wd"] = 1e-4
    path = write_metrics(m, tmp_path / "run", {"run_dir": "x"})
    import json

    data = json.loads(path.read_text())
    assert data["test/retrieval_map"] == 20.0 and data["run_dir"] == "x"
    assert not list((tmp_path / "run").glob("*.tmp"))
    table = format_table(m, "title")
    for k in METRIC_KEYS:
        assert k in table
    assert "title" in table and "20.00" in table
    # a title longer than the table wraps inside its border; no row is wider than the metrics need
    long = "evaluate /a/very/long/path/outputs/mocov2-cub53/method-mocov2_synthesis-syn/checkpoints/last.ckpt"
    lines = format_table(m, long).splitlines()
    assert len({len(line) for line in lines}) == 1 and len(lines[0]) == len(table.splitlines()[0])
    assert "".join(line.strip("| ") for line in lines if "/" in line and "test/" not in line).replace(" ", "") == \
        long.replace(" ", "")


def _sort_reference(feats, labels, ks=(1, 5)):
    """Full-sort retrieval in torch (the textbook way): rank every item of every row."""
    x = torch.nn.functional.normalize(feats.double(), dim=1)
    n = x.shape[0]
    sim = x @ x.t()
    sim.fill_diagonal_(float("-inf"))
    order = sim.argsort(dim=1, descending=True)[:, : n - 1]
    match = (labels[order] == labels.unsqueeze(1)).double()
    m = match.sum(1)
    out = {f"rank{k}": 100.0 * match[:, :k].amax(1)[m > 0].mean().item() for k in ks}  # queries with a match
    prec = match.cumsum(1) / torch.arange(1, n, dtype=torch.float64) * match
    out["map"] = 100.0 * (prec.sum(1)[m > 0] / m[m > 0]).mean().item()
    return out


@pytest.mark.parametrize("levels", [2, 64, 4096])  # 2 levels: nearly every item takes the exact path
@pytest.mark.parametrize("classes,spread", [(3, 0.5), (40, 2.0), (150, 0.0)])
def test_retrieval_matches_full_sort_at_scale(levels, classes, spread, monkeypatch):
    import fgssl.eval.retrieval as retrieval

    monkeypatch.setattr(retrieval, "LEVELS", levels)
    g = torch.Generator().manual_seed(classes)
    n, d = 700, 24
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g)
    feats = spread * centres[labels] + torch.randn(n, d, generator=g)
    want = _sort_reference(feats, labels)
    got = retrieval_metrics(feats, labels, chunk=128)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-3), k


def test_retrieval_rejects_non_finite_features():
    feats = torch.randn(10, 4)
    feats[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        retrieval_metrics(feats, torch.arange(10) % 2)


def test_stratified_folds_deal_each_class_evenly():
    y = torch.tensor([0] * 23 + [1] * 10 + [2] * 2)
    fold = stratified_folds(y, 5)
    for c, n in ((0, 23), (1, 10), (2, 2)):
        counts = torch.bincount(fold[y == c], minlength=5)
        assert counts.sum() == n and counts.max() - counts.min() <= 1  # round-robin within the class
    assert torch.equal(fold, stratified_folds(y, 5)), "deterministic"


def test_linear_probe_picks_the_wd_with_the_best_mean_over_folds():
    """The chosen wd is the argmax of the held-out accuracy pooled over the k folds (recomputed here), and
    the 10 % split of before stays available as folds=1."""
    from fgssl.eval.linear import _accuracy, fit_logreg

    x, y = _clusters(classes=4, per_class=15, seed=2, noise=1.2)
    tx, ty = _clusters(classes=4, per_class=5, seed=2, noise=1.2, sample_seed=9)
    grid = (0.0, 1e-2, 1e-1)
    xn = torch.nn.functional.normalize(x, dim=1)
    fold = stratified_folds(y, 3)
    pooled = []
    for wd in grid:
        hits = 0.0
        for f in range(3):
            fit, held = fold != f, fold == f
            hits += _accuracy(fit_logreg(xn[fit], y[fit], 4, wd, 30), xn[held], y[held], 4) * held.sum().item()
        pooled.append(hits / len(y))
    want = grid[max(range(len(grid)), key=lambda i: (pooled[i], -i))]
    assert linear_probe(x, y, tx, ty, 4, wd_grid=grid, max_iter=30, folds=3)["wd"] == want
    one = linear_probe(x, y, tx, ty, 4, wd_grid=grid, max_iter=30, folds=1)
    assert one["wd"] in grid


def test_linear_probe_with_one_image_per_class():
    """eval.max_images below the number of classes leaves one image per class: no fold may hold out a
    class's only image (the 5-fold probe's first version held out everything in fold 0 and L-BFGS failed on
    an empty fit set, IndexError in torch's line search); nothing to choose from, so the grid's first wd."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 16, generator=g), torch.arange(12)
    assert (stratified_folds(y, 5) == -1).all()
    out = linear_probe(x, y, x, y, 12, wd_grid=(1e-4, 0.0), max_iter=20)
    assert out["wd"] == 1e-4 and out["top1"] == 100.0
    y2 = torch.tensor([0, 0, 0, 1, 2, 2])  # class 1 has one image: never held out, in every fit set
    fold = stratified_folds(y2, 3)
    assert fold[3] == -1 and sorted(fold[y2 == 0].tolist()) == [0, 1, 2]
