"""The fused batch triplet loss against its float64 brute-force reference (every mining mode,
distance and reduction; singletons, one class, equal embeddings, empty batches) and against
pytorch-metric-learning's TripletMarginLoss with its miners (skipped without it); gradcheck,
opcheck, torch.compile, half precision and autocast, bad input."""

import itertools

import pytest
import torch

import fastmtl.ops as F
from fastmtl.ops._triplet_reference import DISTANCES, MINING, REDUCTIONS, triplet_terms_reference
from tests.utils import compiled_only, has_cuda

pytestmark = compiled_only

F64 = torch.float64


def batch(gen, b=40, dim=6, classes=6, dtype=F64):
    """Embeddings and labels with a singleton identity and two equal embeddings of one identity."""
    x = torch.randn(b, dim, generator=gen, dtype=F64)
    labels = torch.randint(0, classes, (b,), generator=gen)
    labels[0] = classes + 1
    x[3], labels[3] = x[5], labels[5]
    return x.to(dtype), labels


def reference(x, labels, margin, mining, distance, reduction):
    loss, active, mined, pos, neg = triplet_terms_reference(x, labels, margin, mining, distance)
    if reduction == "mean_nonzero":
        loss = loss.sum() / active.sum().clamp(min=1)
    elif reduction == "mean":
        loss = loss.sum() / mined.sum().clamp(min=1)
    elif reduction == "sum":
        loss = loss.sum()
    some = mined.sum().clamp(min=1).double()
    stats = {
        "active_fraction": active.sum() / some,
        "pos_mean": pos.sum() / some,
        "neg_mean": neg.sum() / some,
    }
    return loss, stats, mined.sum()


def loss_and_grad(fn, x, weights):
    x = x.clone().requires_grad_()
    loss = fn(x)
    (grad,) = torch.autograd.grad((loss * weights).sum(), x)
    return loss.detach(), grad


@pytest.mark.parametrize(
    "mining, distance, reduction", list(itertools.product(MINING, DISTANCES, REDUCTIONS))
)
def test_loss_gradient_and_statistics_equal_the_reference(mining, distance, reduction, gen):
    x, labels = batch(gen)
    weights = torch.rand(x.shape[0] if reduction == "none" else (), generator=gen, dtype=F64)
    args = (labels, 0.3, mining, distance)
    got, grad = loss_and_grad(lambda t: F.triplet_margin_loss(t, *args, reduction)["loss"], x, weights)
    want, want_grad = loss_and_grad(lambda t: reference(t, *args, reduction)[0], x, weights)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    out = F.triplet_margin_loss(x, *args, reduction)
    _, stats, mined = reference(x, *args, reduction)
    assert out["triplets"].item() == mined.item() and out["triplets"].dtype == F64
    for k, v in stats.items():
        torch.testing.assert_close(out[k], v.to(F64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mining", MINING)
@pytest.mark.parametrize("distance", DISTANCES)
def test_degenerate_batches(mining, distance, gen):
    x, _ = batch(gen, b=9)
    one_class = torch.zeros(9, dtype=torch.long)
    singletons = torch.arange(9)
    for labels in (one_class, singletons):  # no valid triplet: 0, and no gradient
        out, grad = loss_and_grad(
            lambda t, lb=labels: F.triplet_margin_loss(t, lb, 0.3, mining, distance)["loss"], x, 1
        )
        assert out.item() == 0 and not grad.any()
        assert F.triplet_margin_loss(x, labels, 0.3, mining, distance)["triplets"].item() == 0
    same = x[:1].expand(9, -1).contiguous()  # all equal: every triplet at the margin exactly
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    out, grad = loss_and_grad(
        lambda t: F.triplet_margin_loss(t, labels, 0.3, mining, distance)["loss"], same, 1
    )
    want, want_grad = loss_and_grad(
        lambda t: reference(t, labels, 0.3, mining, distance, "mean_nonzero")[0], same, 1
    )
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(grad, want_grad, atol=1e-12, rtol=0)
    for b in (0, 1):
        out = F.triplet_margin_loss(
            torch.randn(b, 4, dtype=F64), torch.zeros(b, dtype=torch.long), 0.3, mining
        )
        assert out["loss"].item() == 0 and out["triplets"].item() == 0


def test_batch_of_64_in_float32(gen):
    x, labels = batch(gen, b=64, dim=16, classes=8, dtype=torch.float32)
    for mining, distance in itertools.product(MINING, DISTANCES):
        got = F.triplet_margin_loss(x, labels, 0.2, mining, distance)["loss"]
        want = reference(x.double(), labels, 0.2, mining, distance, "mean_nonzero")[0]
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


PML_MINERS = {
    "all": lambda miners, dist, m: None,
    "hard": lambda miners, dist, m: miners.BatchHardMiner(distance=dist),
    "semihard_all": lambda miners, dist, m: miners.TripletMarginMiner(
        margin=m, type_of_triplets="semihard", distance=dist
    ),
}


@pytest.mark.parametrize("mining", sorted(PML_MINERS))
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_equals_pytorch_metric_learning(mining, distance, dtype, gen):
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses, miners

    assert pml.__version__ == "2.9.0"
    dist = {
        "euclidean": distances.LpDistance(normalize_embeddings=False),
        "squared_euclidean": distances.LpDistance(normalize_embeddings=False, power=2),
        "cosine": distances.CosineSimilarity(),
    }[distance]
    x, labels = batch(gen, b=48, dim=8, classes=7, dtype=dtype)
    x[3] += 0.01  # PML's cdist has no exact zero distance
    margin = 0.25
    miner = PML_MINERS[mining](miners, dist, margin)
    loss_fn = losses.TripletMarginLoss(margin=margin, distance=dist)

    def theirs(t):
        return loss_fn(t, labels, miner(t, labels) if miner else None)

    got, grad = loss_and_grad(
        lambda t: F.triplet_margin_loss(t, labels, margin, mining, distance)["loss"], x, 1
    )
    want, want_grad = loss_and_grad(theirs, x, 1)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == F64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(grad, want_grad, **tol)


@pytest.mark.parametrize("mining", MINING)
@pytest.mark.parametrize("distance", DISTANCES)
def test_gradcheck(mining, distance, gen):
    x, labels = batch(gen, b=10, dim=3, classes=3)
    x[3] += 0.1  # no equal pair: the euclidean distance is smooth
    assert torch.autograd.gradcheck(
        lambda t: F.triplet_margin_loss(t, labels, 0.5, mining, distance, "sum")["loss"],
        (x.requires_grad_(),),
    )


def test_opcheck_and_compile(gen):
    x, labels = batch(gen, b=12, dim=4, dtype=torch.float32)
    for grad, (mining, distance) in itertools.product(
        (False, True), [("all", "cosine"), ("hard", "euclidean")]
    ):
        args = (x.clone().requires_grad_(grad), labels, 0.3, mining, distance, grad)
        torch.library.opcheck(torch.ops.fastmtl.triplet_margin_loss.default, args)

    def step(t):
        return F.triplet_margin_loss(t, labels, 0.3, "semihard", "euclidean")["loss"]

    want, want_grad = loss_and_grad(step, x, 1)
    for backend in ("eager", "aot_eager"):
        got, grad = loss_and_grad(torch.compile(step, fullgraph=True, backend=backend), x, 1)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(grad, want_grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype, gen):
    x, labels = batch(gen, b=32, dim=8, dtype=dtype)
    x = x.requires_grad_()
    out = F.triplet_margin_loss(x, labels, 0.3, "all", "cosine")
    assert out["loss"].dtype == torch.float32
    out["loss"].backward()
    assert x.grad.dtype == dtype
    want = reference(x.detach().double(), labels, 0.3, "all", "cosine", "mean_nonzero")[0]
    torch.testing.assert_close(out["loss"].double(), want, rtol=1e-3, atol=1e-3)


def test_under_autocast_the_loss_stays_in_float32(gen):
    x, labels = batch(gen, b=16, dtype=torch.float32)
    want = F.triplet_margin_loss(x, labels, 0.3)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = F.triplet_margin_loss(x, labels, 0.3)["loss"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mining", MINING)
def test_double_backward_through_the_reference(mining, gen):
    x, labels = batch(gen, b=10, dim=3, classes=3)
    x[3] += 0.1  # no equal pair
    fn = lambda t: F.triplet_margin_loss(t, labels, 0.5, mining, "euclidean", "sum")["loss"]  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x.requires_grad_(),))
    a, pos, neg = (t.requires_grad_() for t in rows(gen, b=6, dim=3))
    assert torch.autograd.gradgradcheck(lambda *t: F.triplet_loss(*t, swap=True), (a, pos, neg))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(embeddings=a["embeddings"][0]), "embeddings must have shape"),
        (lambda a: a.update(embeddings=a["embeddings"][:, :0]), "D >= 1"),
        (lambda a: a.update(embeddings=a["embeddings"].int()), "embeddings must be float"),
        (lambda a: a.update(labels=a["labels"][:-1]), "labels must have shape"),
        (lambda a: a.update(labels=a["labels"].float()), "labels must be int64"),
        (lambda a: a.update(margin=float("nan")), "margin"),
        (lambda a: a.update(mining="hardest"), "Invalid mining"),
        (lambda a: a.update(distance="manhattan"), "Invalid distance"),
        (lambda a: a.update(reduction="avg"), "Invalid reduction"),
        (lambda a: a["embeddings"].__setitem__((2, 1), float("inf")), "NaN or infinite"),
        (lambda a: a["embeddings"].__setitem__((3, 0), 3e19), "embeddings: a row's squared norm overflows"),
        (lambda a: a.update(distance="cosine", embeddings=a["embeddings"] * 1e30), "overflows"),
    ],
)
def test_bad_input_names_the_argument(change, match, gen):
    x, labels = batch(gen, b=8, dtype=torch.float32)
    a = {"embeddings": x, "labels": labels, "margin": 0.3}
    change(a)
    with pytest.raises((ValueError, RuntimeError), match=match):
        F.triplet_margin_loss(**a)
    if "reduction" not in a:  # the op's own checks say the same
        with pytest.raises((ValueError, RuntimeError), match=match.split(" ")[0]):
            torch.ops.fastmtl.triplet_margin_loss(
                a["embeddings"],
                a["labels"],
                a["margin"],
                a.get("mining", "all"),
                a.get("distance", "cosine"),
                False,
            )


@pytest.mark.cuda
@pytest.mark.skipif(not has_cuda(), reason="needs a CUDA device")
@pytest.mark.parametrize("mining", MINING)
@pytest.mark.parametrize("distance", DISTANCES)
def test_cuda_matches_cpu(mining, distance, gen):
    x, labels = batch(gen, b=300, dim=32, classes=40, dtype=torch.float32)
    results = []
    for device in ("cpu", "cuda"):
        t = x.to(device).requires_grad_()
        out = F.triplet_margin_loss(t, labels.to(device), 0.2, mining, distance)
        out["loss"].backward()
        results.append([out["loss"].cpu(), out["triplets"].cpu(), out["pos_mean"].cpu(), t.grad.cpu()])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


# ---- the classic form: torch.nn.functional.triplet_margin_loss ---------------------------


def rows(gen, b=20, dim=7, dtype=F64):
    return [torch.randn(b, dim, generator=gen, dtype=F64).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, 0.5])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_classic_form_equals_torch(p, swap, reduction, gen):
    a, pos, neg = rows(gen)
    pos[3] = neg[3] + 1e-3  # a near tie of the swap
    weights = torch.rand(20 if reduction == "none" else (), generator=gen, dtype=F64)
    got, want = [], []
    for fn, out in ((F.triplet_loss, got), (torch.nn.functional.triplet_margin_loss, want)):
        ts = [t.clone().requires_grad_() for t in (a, pos, neg)]
        loss = fn(*ts, 0.5, p, 1e-6, swap, reduction=reduction)
        out += [loss.detach(), *torch.autograd.grad((loss * weights).sum(), ts)]
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_classic_form_unbatched_empty_half_and_compile(gen):
    a, pos, neg = (t[0] for t in rows(gen))
    torch.testing.assert_close(
        F.triplet_loss(a, pos, neg), torch.nn.functional.triplet_margin_loss(a, pos, neg)
    )
    empty = [torch.zeros(0, 4) for _ in range(3)]
    assert F.triplet_loss(*empty, reduction="sum").item() == 0 and F.triplet_loss(
        *empty, reduction="none"
    ).shape == (0,)
    half = [t.requires_grad_() for t in rows(gen, dtype=torch.bfloat16)]
    loss = F.triplet_loss(*half)
    assert loss.dtype == torch.float32
    loss.backward()
    assert half[0].grad.dtype == torch.bfloat16
    want = torch.nn.functional.triplet_margin_loss(*[t.detach().double() for t in half])
    torch.testing.assert_close(loss.double(), want, rtol=1e-3, atol=1e-3)
    a, pos, neg = rows(gen, dtype=torch.float32)
    for grad in (False, True):
        args = (a.clone().requires_grad_(grad), pos, neg, 1.0, 2.0, 1e-6, True, grad)
        torch.library.opcheck(torch.ops.fastmtl.triplet_loss.default, args)
    compiled = torch.compile(lambda *t: F.triplet_loss(*t, swap=True), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(a, pos, neg), F.triplet_loss(a, pos, neg, swap=True))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda t: t.update(positive=t["positive"][:, :3]), "positive must have the shape"),
        (lambda t: t.update(negative=t["negative"].double()), "negative must have the dtype"),
        (lambda t: t.update(anchor=t["anchor"][None]), "anchor must have shape"),
        (lambda t: t.update(p=0.0), "p must be"),
        (lambda t: t.update(eps=float("inf")), "eps"),
        (lambda t: t.update(reduction="avg"), "Invalid reduction"),
    ],
)
def test_classic_form_bad_input(change, match, gen):
    a, pos, neg = rows(gen, dtype=torch.float32)
    args = {"anchor": a, "positive": pos, "negative": neg}
    change(args)
    with pytest.raises((ValueError, RuntimeError), match=match):
        F.triplet_loss(**args)


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_batch_hard_keeps_compact_weights(distance, gen):
    # batch-hard returns each anchor's positive and negative with their weights: no B x B tensor
    x, labels = batch(gen, b=30, dtype=torch.float64)
    loss, _, w, pairs = torch.ops.fastmtl.triplet_margin_loss(x, labels, 0.5, "hard", distance, True)
    assert w.shape == pairs.shape == (30, 2) and pairs.dtype == torch.int64
    has = pairs >= 0
    anchors = torch.arange(30)
    assert bool((labels[pairs[:, 0][has[:, 0]]] == labels[has[:, 0]]).all())  # positives share the label
    assert bool((pairs[:, 0][has[:, 0]] != anchors[has[:, 0]]).all())
    assert bool((labels[pairs[:, 1][has[:, 1]]] != labels[has[:, 1]]).all())  # negatives do not
    assert pairs[0, 0] == -1 and bool((w[0] == 0).all())  # the singleton identity: no positive, no loss
    dense = torch.zeros(30, 30, dtype=w.dtype)
    for a in range(30):
        for k in range(2):
            if pairs[a, k] >= 0:
                dense[a, pairs[a, k]] += w[a, k]
    g = torch.rand(30, generator=gen, dtype=torch.float64)
    empty = torch.empty(0, dtype=torch.int64)
    compact = torch.ops.fastmtl._triplet_margin_loss_backward(g, w, pairs, x, distance)
    torch.testing.assert_close(
        compact, torch.ops.fastmtl._triplet_margin_loss_backward(g, dense, empty, x, distance)
    )
    with pytest.raises(RuntimeError, match="pairs must be int64"):
        torch.ops.fastmtl._triplet_margin_loss_backward(g, w, pairs.int(), x, distance)
    with pytest.raises(RuntimeError, match="weights must have the shape of pairs"):
        torch.ops.fastmtl._triplet_margin_loss_backward(g, dense, pairs, x, distance)
    _, _, none_w, none_pairs = torch.ops.fastmtl.triplet_margin_loss(x, labels, 0.5, "hard", distance, False)
    assert none_w.numel() == 0 and none_pairs.numel() == 0
    assert torch.isfinite(loss).all()


def test_batch_hard_many_blocks_equals_plain_autograd(gen):
    # B = 600: the CPU takes the distances in several blocks of rows, on worker threads
    x, labels = (
        torch.randn(600, 8, generator=gen, dtype=torch.float64),
        torch.randint(0, 40, (600,), generator=gen),
    )
    out = F.triplet_margin_loss(x.clone().requires_grad_(), labels, 0.3, "hard", "euclidean")
    d = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    pos = torch.where(same & ~torch.eye(600, dtype=torch.bool), d, -1.0).argmax(1)
    neg = torch.where(~same, d, float("inf")).argmin(1)
    ref_x = x.clone().requires_grad_()
    per = torch.relu((ref_x - ref_x[pos]).norm(dim=1) - (ref_x - ref_x[neg]).norm(dim=1) + 0.3)
    ref = per.sum() / (per > 0).sum()
    (want,) = torch.autograd.grad(ref, ref_x)
    got_x = x.clone().requires_grad_()
    (got,) = torch.autograd.grad(
        F.triplet_margin_loss(got_x, labels, 0.3, "hard", "euclidean")["loss"], got_x
    )
    torch.testing.assert_close(out["loss"].detach(), ref.detach())
    torch.testing.assert_close(got, want)
