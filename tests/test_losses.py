"""InfoNCE and SimSiam's negative cosine against values computed by hand (plain Python)."""

from __future__ import annotations

import math

import pytest
import torch

from fgssl.losses.infonce import infonce_logits, infonce_loss
from fgssl.losses.negative_cosine import negative_cosine, simsiam_loss


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _infonce_by_hand(q, k, queue, t):
    """mean_i -log( exp(q_i.k_i/t) / (exp(q_i.k_i/t) + sum_j exp(q_i.n_j/t)) )"""
    total = 0.0
    for qi, ki in zip(q, k):
        pos = math.exp(_dot(qi, ki) / t)
        neg = sum(math.exp(_dot(qi, nj) / t) for nj in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def test_infonce_orthonormal_closed_form():
    # q = k = e1, negatives e2, e3: L = -log(e^{1/T} / (e^{1/T} + 2)) = log(1 + 2 e^{-1/T})
    t = 0.2
    q = torch.tensor([[1.0, 0.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    got = infonce_loss(q, q.clone(), queue, t).item()
    assert got == pytest.approx(math.log(1 + 2 * math.exp(-1 / t)), rel=1e-6)
    # the key is the negative direction: L = log(1 + 2 e^{2/T})... computed explicitly
    k = torch.tensor([[-1.0, 0.0, 0.0]])
    want = -math.log(math.exp(-1 / t) / (math.exp(-1 / t) + 2 * math.exp(0.0)))
    assert infonce_loss(q, k, queue, t).item() == pytest.approx(want, rel=1e-6)


def test_infonce_against_hand_loops():
    q = [_unit([1.0, 2.0, -1.0]), _unit([0.5, -0.3, 0.8])]
    k = [_unit([0.9, 1.5, -0.2]), _unit([-0.1, 0.2, 1.0])]
    queue = [_unit([1.0, 0.0, 0.0]), _unit([0.0, -1.0, 1.0]), _unit([-2.0, 1.0, 0.5]), _unit([0.3, 0.3, 0.3])]
    for t in (0.2, 0.07, 1.0):
        want = _infonce_by_hand(q, k, queue, t)
        got = infonce_loss(torch.tensor(q), torch.tensor(k), torch.tensor(queue), t).item()
        assert got == pytest.approx(want, rel=1e-5), t
    # logits: column 0 = positive, then the queue in order, all divided by T
    logits = infonce_logits(torch.tensor(q), torch.tensor(k), torch.tensor(queue), 0.5)
    assert logits.shape == (2, 5)
    for i in range(2):
        assert logits[i, 0].item() == pytest.approx(_dot(q[i], k[i]) / 0.5, rel=1e-6)
        for j in range(4):
            assert logits[i, 1 + j].item() == pytest.approx(_dot(q[i], queue[j]) / 0.5, rel=1e-6, abs=1e-7)


def test_infonce_gradient_only_through_query():
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 0.5]]), dim=1).requires_grad_()
    k = torch.nn.functional.normalize(torch.tensor([[0.4, 1.0, 0.0]]), dim=1).requires_grad_()
    queue = torch.nn.functional.normalize(torch.tensor([[1.0, -1.0, 0.0]]), dim=1).requires_grad_()
    t = 0.2
    infonce_loss(q, k, queue, t).backward()
    assert k.grad is None and queue.grad is None
    # dL/dq = (softmax(logits) - onehot(0)) @ [k; queue] / T, by hand
    kv, nv, qv = k.detach()[0].tolist(), queue.detach()[0].tolist(), q.detach()[0].tolist()
    a, b = math.exp(_dot(qv, kv) / t), math.exp(_dot(qv, nv) / t)
    pa, pb = a / (a + b), b / (a + b)
    want = [((pa - 1) * kv[d] + pb * nv[d]) / t for d in range(3)]
    assert q.grad[0].tolist() == pytest.approx(want, rel=2e-4, abs=1e-6)


def _cos(a, b):
    return _dot(a, b) / (math.sqrt(_dot(a, a)) * math.sqrt(_dot(b, b)))


def test_negative_cosine_by_hand():
    p = [[1.0, 0.0], [1.0, 1.0], [3.0, -4.0]]
    z = [[0.0, 2.0], [2.0, 2.0], [-3.0, 4.0]]
    # cosines 0, 1, -1 -> D = -(0 + 1 - 1)/3 = 0
    assert negative_cosine(torch.tensor(p), torch.tensor(z)).item() == pytest.approx(0.0, abs=1e-7)
    p = [[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]]
    z = [[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]]
    want = -(_cos(p[0], z[0]) + _cos(p[1], z[1])) / 2
    assert negative_cosine(torch.tensor(p), torch.tensor(z)).item() == pytest.approx(want, rel=1e-6)
    # scale invariance: D depends on directions only
    assert negative_cosine(torch.tensor(p) * 7, torch.tensor(z) * 0.1).item() == pytest.approx(want, rel=1e-6)


def test_simsiam_loss_by_hand_and_stop_gradient():
    p1 = [[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]]
    p2 = [[2.0, -1.0, 1.0], [1.0, 1.0, 1.0]]
    z1 = [[1.0, 1.0, 0.0], [0.5, 0.0, 2.0]]
    z2 = [[0.0, 3.0, 1.0], [-1.0, 2.0, 0.0]]
    d12 = -sum(_cos(a, b) for a, b in zip(p1, z2)) / 2
    d21 = -sum(_cos(a, b) for a, b in zip(p2, z1)) / 2
    want = 0.5 * d12 + 0.5 * d21
    tp1, tp2, tz1, tz2 = (torch.tensor(v, requires_grad=True) for v in (p1, p2, z1, z2))
    loss = simsiam_loss(tp1, tp2, tz1, tz2)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert tz1.grad is None and tz2.grad is None, "z must be stop-gradient"
    assert tp1.grad is not None and tp2.grad is not None
    # the loss is bounded in [-1, 1] and -1 exactly when p_i is parallel to the other view's z
    t = torch.tensor(z1)
    assert simsiam_loss(t * 2, t * 3, t, t).item() == pytest.approx(-1.0, abs=1e-6)
