"""PyTorch integration: autograd through xentc.cross_entropy, gradcheck,
xentc.torch.CrossEntropyLoss, and import hygiene (xentc alone never imports torch).

The oracle is torch's own cross_entropy, differentiated by torch autograd.
"""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xentc
import xentc.torch
from reference import (
    REDUCTIONS,
    class_axis,
    make_logits,
    make_soft_targets,
    make_targets,
    make_weight,
)

# name -> (shape, axis): 1-D, (N, C), K-dim (N, C, d1, d2), language model (B, T, V)
LAYOUTS = {
    "C": ((6,), None),
    "NC": ((4, 6), None),
    "NCd1d2": ((2, 6, 2, 2), None),
    "BTV": ((2, 3, 6), -1),
}
# class indices with none ignored / some -100 / a real class (2) as ignore_index; probabilities
TARGETS = ("class", "ignored", "ignore_class", "soft")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True, scope="module")
def _torch_single_thread():
    """torch runs on one thread here: on tiny problems its thread pool costs more
    than it gives, and the suite shares the machine's cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------
# problems and the torch oracle
# ---------------------------------------------------------------------------


def make_problem(rng, layout, targets, weighted=False, smoothing=0.0, dtype=np.float64):
    """Logits (a NumPy array) and torch keyword arguments for one call."""
    shape, axis = LAYOUTS[layout]
    ax = class_axis(len(shape), axis)
    n_classes = shape[ax]
    tshape = tuple(s for i, s in enumerate(shape) if i != ax)
    kw = dict(axis=axis, label_smoothing=smoothing)
    if weighted:
        kw["weight"] = torch.from_numpy(make_weight(rng, n_classes, dtype))
    if targets == "soft":
        t = make_soft_targets(rng, shape, dtype, axis=axis)
    elif targets == "class":
        t = make_targets(rng, tshape, n_classes)
    elif targets == "ignored":
        t = make_targets(rng, tshape, n_classes, ignore_index=-100)
    elif targets == "ignore_class":
        t = make_targets(rng, tshape, n_classes, ignore_index=2)
        kw["ignore_index"] = 2
    else:
        raise ValueError(targets)
    kw["target"] = torch.from_numpy(np.array(t))
    return make_logits(rng, shape, dtype), kw


def torch_ce(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
             axis=None):
    """torch.nn.functional.cross_entropy with xentc's `axis` (moved where torch wants it)."""
    ax = class_axis(x.ndim, axis)
    tax = 0 if x.ndim == 1 else 1
    if target.is_floating_point():
        target = target.movedim(ax, tax)
    return F.cross_entropy(x.movedim(ax, tax), target, weight=weight, ignore_index=ignore_index,
                           reduction=reduction, label_smoothing=label_smoothing)


def leaf(x, device="cpu"):
    return torch.tensor(x, device=device, requires_grad=True)


def grads(fn, x_np, kw, grad_output=None, device="cpu"):
    """(loss, d(grad_output . loss)/dx) of fn(x, **kw) by autograd, with the loss's attributes."""
    x = leaf(x_np, device)
    loss = fn(x, **kw)
    assert isinstance(loss, torch.Tensor)
    assert loss.requires_grad and loss.grad_fn is not None
    assert loss.dtype == x.dtype and loss.device == x.device
    if grad_output is None:
        loss.backward() if loss.ndim == 0 else loss.backward(torch.ones_like(loss))
    else:
        loss.backward(grad_output)
    assert x.grad.shape == x.shape and x.grad.dtype == x.dtype and x.grad.device == x.device
    return loss.detach(), x.grad


def random_grad_output(rng, reduction, loss_shape, dtype=torch.float64, device="cpu"):
    if reduction == "none":
        return torch.tensor(rng.uniform(-2.0, 2.0, loss_shape), dtype=dtype, device=device)
    return torch.tensor(float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0)), dtype=dtype,
                        device=device)


def close(got, want, dtype=torch.float64, ulps=64):
    """Equal within `ulps` ulp of the largest finite magnitude; NaN where torch has NaN."""
    finite = want[torch.isfinite(want)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got, want.to(got.dtype), rtol=ulps * eps,
                               atol=ulps * eps * max(scale, 1e-300), equal_nan=True)


# ---------------------------------------------------------------------------
# autograd against torch
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_autograd_matches_torch(layout, targets, weighted, smoothing, backend, rng):
    """A tensor that requires grad gets a loss attached to autograd whose gradient is
    torch's, for every semantics combination, reduction and layout, with a random
    upstream gradient (and loss.backward()'s implicit 1 for "mean")."""
    x, kw = make_problem(rng, layout, targets, weighted, smoothing)

    def ours(z, **k):
        return xentc.cross_entropy(z, backend=backend, **k)

    for reduction in REDUCTIONS:
        loss_shape = torch_ce(torch.from_numpy(x), reduction=reduction, **kw).shape
        upstream = [random_grad_output(rng, reduction, loss_shape)]
        if reduction == "mean":
            upstream.append(None)
        for go in upstream:
            got_loss, got_grad = grads(ours, x, dict(kw, reduction=reduction), go)
            want_loss, want_grad = grads(torch_ce, x, dict(kw, reduction=reduction), go)
            assert got_loss.shape == want_loss.shape
            close(got_loss, want_loss)
            close(got_grad, want_grad)


@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_autograd_float32_within_eps(layout, targets, backend, rng):
    """float32 gradients are within a few float32 ulp of torch's float64 gradient."""
    x, kw = make_problem(rng, layout, targets, weighted=True, smoothing=0.1, dtype=np.float32)
    kw64 = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in kw.items()}
    for reduction in REDUCTIONS:
        _, got = grads(lambda z, **k: xentc.cross_entropy(z, backend=backend, **k), x,
                       dict(kw, reduction=reduction))
        _, want = grads(torch_ce, x.astype(np.float64), dict(kw64, reduction=reduction))
        close(got, want, dtype=torch.float32)


@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gradcheck(layout, targets, backend, rng):
    """torch.autograd.gradcheck (finite differences, float64) passes for each reduction."""
    if layout == "C" and targets == "ignored":
        targets = "class"  # a single ignored target has a NaN mean: nothing to check
    x, kw = make_problem(rng, layout, targets, weighted=True, smoothing=0.2)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda z: xentc.cross_entropy(z, reduction=reduction, backend=backend, **kw),
            (leaf(x),))


@pytest.mark.parametrize("targets", ["class", "soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_backward(reduction, targets, backend):
    """No rows: torch's loss (mean NaN, sum 0) and, through .backward(), an empty
    gradient of the input's shape."""
    x = np.zeros((0, 6))
    t = torch.zeros(0, 6, dtype=torch.float64) if targets == "soft" else torch.zeros(0, dtype=torch.long)
    kw = dict(target=t, reduction=reduction)
    got_loss, got_grad = grads(lambda z, **k: xentc.cross_entropy(z, backend=backend, **k), x, kw)
    want_loss, want_grad = grads(torch_ce, x, kw)
    torch.testing.assert_close(got_loss, want_loss, equal_nan=True)
    torch.testing.assert_close(got_grad, want_grad)


def test_non_leaf_input_chain_rule(backend, rng):
    """The gradient flows on through the graph that produced the logits."""
    x, kw = make_problem(rng, "NC", "ignored", weighted=True, smoothing=0.1)

    def through(fn):
        z = leaf(x)
        fn(torch.tanh(z) * 3.0, **kw).backward()
        return z.grad

    close(through(lambda z, **k: xentc.cross_entropy(z, backend=backend, **k)), through(torch_ce))


def test_backward_adopts_the_forward_buffer(monkeypatch):
    """loss.backward() leaves in x.grad the very buffer the fused forward wrote:
    no copy of the (N, C) gradient is made on the way."""
    written = []
    fused = xentc._api.LossCall.run  # the loss call the autograd node runs

    def recording(*args, **kwargs):
        loss, grad = fused(*args, **kwargs)
        written.append(grad.data_ptr())
        return loss, grad

    monkeypatch.setattr(xentc._api.LossCall, "run", recording)
    x = torch.randn(64, 300, requires_grad=True)
    xentc.cross_entropy(x, torch.randint(0, 300, (64,))).backward()
    assert len(written) == 1 and x.grad.data_ptr() == written[0]


def test_backward_twice_with_retained_graph(backend, rng):
    """A retained graph can be differentiated again, even after the first gradient was
    zeroed or edited in place: the caller never holds xentc's saved buffer."""
    x, kw = make_problem(rng, "NC", "ignored", weighted=True, smoothing=0.1)
    z = leaf(x)
    loss = xentc.cross_entropy(z, backend=backend, **kw)
    _, want = grads(torch_ce, x, kw)
    loss.backward(retain_graph=True)
    z.grad.zero_()
    loss.backward(retain_graph=True)
    close(z.grad, want)
    (g,) = torch.autograd.grad(loss, z, retain_graph=True)
    close(g, want)
    g.mul_(0.0)
    (g,) = torch.autograd.grad(loss, z)
    close(g, want)


def test_two_losses_share_the_input(backend, rng):
    """Two xentc losses of one input (and a scaled sum) accumulate as torch's do."""
    x, kw = make_problem(rng, "NCd1d2", "ignored", weighted=True)
    kw_none = dict(kw, reduction="none")

    def objective(fn):
        z = leaf(x)
        (fn(z, **kw) * 2.5 - fn(z, **kw_none).square().sum()).backward()
        return z.grad

    close(objective(lambda z, **k: xentc.cross_entropy(z, backend=backend, **k)),
          objective(torch_ce))


# ---------------------------------------------------------------------------
# plain tensors where autograd is off
# ---------------------------------------------------------------------------


def test_no_grad_input_gives_plain_tensor(backend, rng):
    """An input that does not require grad gives a plain tensor with torch's value."""
    x, kw = make_problem(rng, "NC", "ignored", weighted=True)
    got = xentc.cross_entropy(torch.from_numpy(x), backend=backend, **kw)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    assert not got.requires_grad and got.grad_fn is None
    close(got, torch_ce(torch.from_numpy(x), **kw))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_grad_disabled_gives_plain_tensor(mode, backend, rng):
    """Under torch.no_grad() (or inference_mode), an input that requires grad gives a
    plain tensor with torch's value, as F.cross_entropy does."""
    x, kw = make_problem(rng, "NC", "ignored", weighted=True)
    z = leaf(x)
    with getattr(torch, mode)():
        got = xentc.cross_entropy(z, backend=backend, **kw)
        want = torch_ce(z, **kw)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    assert not got.requires_grad and got.grad_fn is None
    close(got, want)


# ---------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------


def test_double_backward_refused(backend, rng):
    """create_graph=True (a second derivative) is refused with a clear RuntimeError."""
    x, kw = make_problem(rng, "NC", "ignored")
    z = leaf(x)
    loss = xentc.cross_entropy(z, backend=backend, **kw)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, z, create_graph=True)


def test_weight_requiring_grad_refused(backend, rng):
    """A gradient with respect to `weight` is not computed: NotImplementedError naming it."""
    x, kw = make_problem(rng, "NC", "ignored", weighted=True)
    kw["weight"].requires_grad_(True)
    with pytest.raises(NotImplementedError, match="weight"):
        xentc.cross_entropy(leaf(x), backend=backend, **kw)


def test_soft_target_requiring_grad_refused(backend, rng):
    """Nor with respect to probability targets: NotImplementedError naming `target`."""
    x, kw = make_problem(rng, "NC", "soft")
    kw["target"].requires_grad_(True)
    with pytest.raises(NotImplementedError, match="target"):
        xentc.cross_entropy(leaf(x), backend=backend, **kw)


# ---------------------------------------------------------------------------
# xentc.torch.CrossEntropyLoss
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_negative_views_read_as_their_values(dtype, rng):
    """torch's lazy negation (a view with the negative bit) exports its memory
    through DLPack without the sign: xentc reads the values the tensor holds.
    An `out` of that kind, whose memory does not hold its values, is refused."""
    x = torch.from_numpy(make_logits(rng, (5, 7), np.float32)).to(dtype)
    t = torch.from_numpy(make_targets(rng, (5,), 7))
    w = torch.from_numpy(make_weight(rng, 7, np.float32)).to(dtype)
    q = torch.softmax(-x.float(), 1).to(dtype)
    neg = torch._neg_view
    assert neg(x).is_neg()
    for got, want in [
        (xentc.cross_entropy_with_grad(neg(x), t, weight=neg(-w)),
         xentc.cross_entropy_with_grad(-x, t, weight=w)),
        (xentc.cross_entropy_with_grad(x, neg(-q)), xentc.cross_entropy_with_grad(x, q)),
    ]:
        for g, wt in zip(got, want):
            torch.testing.assert_close(g, wt, rtol=0, atol=0)
    with pytest.raises(ValueError, match="`out` is a negative"):
        xentc.cross_entropy_with_grad(x, t, out=neg(torch.zeros_like(x)))


def test_module_has_torchs_constructor():
    """CrossEntropyLoss is an nn.Module whose constructor starts with exactly
    nn.CrossEntropyLoss's parameters (names, order, defaults); extras are keyword-only."""
    assert issubclass(xentc.torch.CrossEntropyLoss, torch.nn.Module)
    theirs = list(inspect.signature(torch.nn.CrossEntropyLoss.__init__).parameters.values())
    ours = list(inspect.signature(xentc.torch.CrossEntropyLoss.__init__).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[:len(theirs)]] == \
           [(p.name, p.kind, p.default) for p in theirs]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs):])


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_module_state_dict_like_torchs(weighted):
    """The weight is a buffer, so state_dict has the same keys as torch's module."""
    w = torch.rand(4) if weighted else None
    ours, theirs = xentc.torch.CrossEntropyLoss(weight=w), torch.nn.CrossEntropyLoss(weight=w)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert dict(ours.named_buffers()).keys() == dict(theirs.named_buffers()).keys()


@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("layout", ["NC", "NCd1d2"])
def test_module_matches_torch(layout, weighted, smoothing, rng):
    """Forward and backward equal torch.nn.CrossEntropyLoss for each reduction and
    ignore_index, passed positionally and by keyword."""
    x, kw = make_problem(rng, layout, "ignore_class", weighted, smoothing)
    w = kw.get("weight")
    for reduction in REDUCTIONS:
        for ignore_index in (-100, 2):
            args = dict(weight=w, ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=smoothing)
            ours = xentc.torch.CrossEntropyLoss(**args)
            theirs = torch.nn.CrossEntropyLoss(**args)
            positional = xentc.torch.CrossEntropyLoss(w, None, ignore_index, None, reduction,
                                                      smoothing)
            t = kw["target"]
            got_loss, got_grad = grads(lambda z: ours(z, t), x, {})
            want_loss, want_grad = grads(lambda z: theirs(z, t), x, {})
            close(got_loss, want_loss)
            close(got_grad, want_grad)
            close(positional(torch.from_numpy(x), t), want_loss)


def test_module_soft_targets(rng):
    """Probability targets go through the module as through torch's."""
    x, kw = make_problem(rng, "NCd1d2", "soft", weighted=True, smoothing=0.1)
    args = dict(weight=kw["weight"], label_smoothing=0.1)
    t = kw["target"]
    got = grads(lambda z: xentc.torch.CrossEntropyLoss(**args)(z, t), x, {})
    want = grads(lambda z: torch.nn.CrossEntropyLoss(**args)(z, t), x, {})
    close(got[0], want[0])
    close(got[1], want[1])


def test_module_to_moves_weight(rng):
    """.to(torch.float64) converts the weight buffer, and the module then serves
    float64 logits with torch's values."""
    w = torch.from_numpy(make_weight(rng, 6, np.float32))
    module = xentc.torch.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    assert module.weight.dtype == torch.float32
    assert module.to(torch.float64) is module
    assert module.weight.dtype == torch.float64
    torch.testing.assert_close(module.weight, w.double(), rtol=0, atol=0)
    x, kw = make_problem(rng, "NC", "ignored")
    want = torch.nn.CrossEntropyLoss(weight=w.double(), label_smoothing=0.1)
    got_loss, got_grad = grads(lambda z: module(z, kw["target"]), x, {})
    want_loss, want_grad = grads(lambda z: want(z, kw["target"]), x, {})
    close(got_loss, want_loss)
    close(got_grad, want_grad)


def test_module_under_no_grad(rng):
    """Evaluation under torch.no_grad() gives a plain tensor, as torch's module does."""
    x, kw = make_problem(rng, "NC", "ignored", weighted=True)
    model = torch.nn.Linear(6, 6).double()  # (4, 6) inputs, 6 classes
    module = xentc.torch.CrossEntropyLoss(weight=kw["weight"])
    with torch.no_grad():
        got = module(model(torch.from_numpy(x)), kw["target"])
        want = torch.nn.CrossEntropyLoss(weight=kw["weight"])(model(torch.from_numpy(x)),
                                                             kw["target"])
    assert isinstance(got, torch.Tensor) and not got.requires_grad and got.grad_fn is None
    close(got, want)


def test_training_loop_matches_torch(rng):
    """Five SGD (momentum) steps of a linear classifier with xentc's loss land on the
    same parameters as with torch's (float64, tight tolerance)."""
    n, d, c = 32, 8, 5
    x = torch.from_numpy(make_logits(rng, (n, d), np.float64, scale=1.0))
    y = torch.from_numpy(make_targets(rng, (n,), c, ignore_index=-100))
    w = torch.from_numpy(make_weight(rng, c, np.float64))
    torch.manual_seed(0)
    start = torch.nn.Linear(d, c).double()

    def train(loss_fn):
        # SGD with momentum written out (torch.optim's first use is slow to import)
        model = copy.deepcopy(start)
        velocity = [torch.zeros_like(p) for p in model.parameters()]
        losses = []
        for _ in range(5):
            model.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            with torch.no_grad():
                for p, v in zip(model.parameters(), velocity):
                    v.mul_(0.9).add_(p.grad)
                    p.sub_(0.5 * v)
            losses.append(loss.item())
        return model, losses

    args = dict(weight=w, ignore_index=-100, label_smoothing=0.1)
    ours, our_losses = train(xentc.torch.CrossEntropyLoss(**args))
    theirs, their_losses = train(torch.nn.CrossEntropyLoss(**args))
    np.testing.assert_allclose(our_losses, their_losses, rtol=1e-12)
    assert their_losses[-1] < their_losses[0]  # the loop does learn something
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13, msg=name)


# ---------------------------------------------------------------------------
# import hygiene
# ---------------------------------------------------------------------------


def test_importing_xentc_does_not_import_torch(tmp_path):
    """A NumPy user never pays for torch: import xentc and compute a loss and its
    gradient in a fresh interpreter; torch is not in sys.modules."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import xentc\n"
        "x = np.array([[0.5, -1.0, 2.0], [0.0, 1.0, 0.0]])\n"
        "t = np.array([2, 1])\n"
        "float(xentc.cross_entropy(x, t))\n"
        "xentc.cross_entropy_with_grad(x, t)\n"
        "for backend in ('cpu', 'generic'):\n"
        "    xentc.cross_entropy(x, t, backend=backend)\n"
        "leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not leaked, leaked\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---------------------------------------------------------------------------
# CUDA tensors (the generic engine, on the device)
# ---------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cuda_autograd_matches_torch(layout, targets, rng):
    """CUDA tensors: the loss and gradient stay on the device and equal torch's."""
    x, kw = make_problem(rng, layout, targets, weighted=True, smoothing=0.1)
    kw = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    for reduction in REDUCTIONS:
        k = dict(kw, reduction=reduction)
        got_loss, got_grad = grads(xentc.cross_entropy, x, k, device="cuda")
        want_loss, want_grad = grads(torch_ce, x, k, device="cuda")
        close(got_loss, want_loss)
        close(got_grad, want_grad)


@cuda
def test_cuda_module_matches_torch(rng):
    """The module moves to CUDA with its weight and gives torch's gradients there."""
    x, kw = make_problem(rng, "NCd1d2", "ignored", weighted=True, smoothing=0.1)
    args = dict(weight=kw["weight"], label_smoothing=0.1)
    ours = xentc.torch.CrossEntropyLoss(**args).to("cuda")
    theirs = torch.nn.CrossEntropyLoss(**args).to("cuda")
    assert ours.weight.device.type == "cuda"
    t = kw["target"].cuda()
    got = grads(lambda z: ours(z, t), x, {}, device="cuda")
    want = grads(lambda z: theirs(z, t), x, {}, device="cuda")
    close(got[0], want[0])
    close(got[1], want[1])
