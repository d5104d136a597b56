"""The benchmark inputs and the peers: each library's implementation of a task."""
import dataclasses
import functools
import importlib
from collections.abc import Callable

import numpy as np

from .._config import module_version
from .machine import read_pass


@dataclasses.dataclass
class Inputs:
    """The data of one shape, shared by every peer.

    Attributes
    ----------
    x : ndarray, shape (N, C)
        Logits, C-contiguous.
    t : ndarray of int64, shape (N,)
        Class targets.
    threads : int
        Cores a peer may use where it lets the caller choose.
    """
    x: np.ndarray
    t: np.ndarray
    threads: int

    @functools.cached_property
    def probs(self):
        """``softmax(x)`` in `x`'s dtype, made on first use (log_loss's input)."""
        p = np.exp(self.x - self.x.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return p


def make_inputs(shape, dtype, rng):
    """Random logits and targets for one shape.

    Parameters
    ----------
    shape : tuple of int
        ``(N, C)``.
    dtype : numpy dtype
        Floating dtype of the logits.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    x : ndarray, shape (N, C)
        ``standard_normal * 3``, C-contiguous.
    t : ndarray of int64, shape (N,)
        Uniform in ``[0, C)``.
    """
    n, c = shape
    x = rng.standard_normal((n, c), dtype=dtype)
    x *= 3
    t = rng.integers(0, c, size=n, dtype=np.int64)
    return x, t


def numpy_reference(x, t):
    """Mean cross-entropy in plain NumPy, two passes over the logits.

    Parameters
    ----------
    x : ndarray, shape (N, C)
        Logits.
    t : ndarray of int, shape (N,)
        Class targets.

    Returns
    -------
    float
        ``mean(logsumexp(x, axis=1) - x[arange(N), t])``.

    Notes
    -----
    ``exp`` writes into the ``x - max`` temporary rather than a second
    array, which keeps the peak memory at two copies of the logits.
    """
    m = x.max(axis=1, keepdims=True)
    shifted = np.subtract(x, m)
    np.exp(shifted, out=shifted)
    lse = m[:, 0] + np.log(shifted.sum(axis=1))
    return (lse - x[np.arange(x.shape[0]), t]).mean()


def _loss_only(run):
    return run, lambda loss: (float(loss),)


def _xentc_forward(d):
    import xentc
    return _loss_only(lambda: xentc.cross_entropy(d.x, d.t, n_threads=d.threads))


def _xentc_fwd_bwd(d):
    import xentc
    # The logits are overwritten by their gradient, so the calls get a copy of
    # their own: each call after the first reads the previous call's gradient,
    # which costs the kernel the same as fresh logits.
    scratch = d.x.copy()

    def check(out):
        loss, grad = out
        return float(loss), grad.copy()  # the next call overwrites it

    return (lambda: xentc.cross_entropy_with_grad(scratch, d.t, out=scratch,
                                                  n_threads=d.threads)), check


def _xentc_log_loss(d):
    import xentc
    labels = np.arange(d.x.shape[1])
    return _loss_only(lambda: xentc.log_loss(d.t, d.probs, labels=labels, n_threads=d.threads))


def _torch_tensors(d, requires_grad=False):
    import torch
    torch.set_num_threads(d.threads)
    return torch.from_numpy(d.x).requires_grad_(requires_grad), torch.from_numpy(d.t)


def _xentc_torch_forward(d):
    import xentc
    xt, tt = _torch_tensors(d)  # views of the same NumPy memory: the C core reads them in place
    return _loss_only(lambda: xentc.cross_entropy(xt, tt, n_threads=d.threads))


def _torch_forward(d):
    import torch
    xt, tt = _torch_tensors(d)
    return _loss_only(lambda: torch.nn.functional.cross_entropy(xt, tt))


def _torch_fwd_bwd(d):
    import torch
    xt, tt = _torch_tensors(d, requires_grad=True)

    def run():
        xt.grad = None  # a fresh gradient each step, as optimizers' zero_grad() leaves it
        loss = torch.nn.functional.cross_entropy(xt, tt)
        loss.backward()
        return loss

    return run, lambda loss: (loss.item(), xt.grad.numpy())


def _jax_compiled(fn, d):
    """`fn(x, t)` jitted for the CPU on `d`'s data, and its arguments there."""
    import jax
    if d.x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)  # else JAX silently computes in float32
    cpu = jax.devices("cpu")[0]
    args = jax.device_put(d.x, cpu), jax.device_put(d.t.astype(np.int32), cpu)
    # XLA's constant folding would evaluate the gradient's scatter of the
    # constant cotangent over all N rows at compile time (19 s for 1.7 M rows
    # on the 2-core machine this was written on, 1 s without); run times with
    # and without it agreed within 5%.
    compiled = jax.jit(fn).lower(*args).compile(
        compiler_options={"xla_disable_hlo_passes": "constant_folding"})
    return lambda: jax.block_until_ready(compiled(*args))


def _optax_loss(x, t):
    import optax
    return optax.softmax_cross_entropy_with_integer_labels(x, t).mean()


def _jax_forward(d):
    return _loss_only(_jax_compiled(_optax_loss, d))


def _jax_fwd_bwd(d):
    import jax
    run = _jax_compiled(jax.value_and_grad(_optax_loss), d)
    return run, lambda out: (float(out[0]), np.asarray(out[1]))


def _numpy_forward(d):
    return _loss_only(lambda: numpy_reference(d.x, d.t))


def _scipy_forward(d):
    from scipy.special import logsumexp
    rows = np.arange(d.x.shape[0])
    return _loss_only(lambda: (logsumexp(d.x, axis=1) - d.x[rows, d.t]).mean())


def _sklearn_log_loss(d):
    from sklearn.metrics import log_loss
    labels = np.arange(d.x.shape[1])
    return _loss_only(lambda: log_loss(d.t, d.probs, labels=labels))


def _read(d):
    read = read_pass(d.threads)
    return (lambda: read(d.x)), lambda out: ()


@dataclasses.dataclass(frozen=True)
class Peer:
    """One implementation of one task.

    Attributes
    ----------
    task : str
        A key of `TASKS`.
    name : str
        Its column title; ``"xentc"`` is the one the others are compared with.
    call : str
        What is timed, for the report.
    requires : tuple of str
        Top-level modules it imports, optionally ``module:attribute`` for an
        attribute the module must have.
    prepare : callable
        ``prepare(inputs) -> (run, check)``: `run` is the timed zero-argument
        call; ``check(run())`` turns its output into its loss (and gradient)
        as Python floats / NumPy arrays, to check that the peers agree.
    """
    task: str
    name: str
    call: str
    requires: tuple[str, ...]
    prepare: Callable[[Inputs], tuple[Callable[[], object], Callable[[object], tuple]]]

    @property
    def key(self):
        """``task/name`` (``read`` for the read pass), unique among the peers."""
        return self.name if self.task == self.name else f"{self.task}/{self.name}"

    def missing(self):
        """The first requirement not met, or None when the peer can run.

        Returns
        -------
        str or None
            A module or ``module.attribute`` name.
        """
        for req in self.requires:
            module, _, attr = req.partition(":")
            if module_version(module) is None:
                return module
            if attr and not hasattr(importlib.import_module(module), attr):
                return f"{module}.{attr}"
        return None


#: Task name -> what it computes (mean reduction, class targets).
TASKS = {
    "forward": "cross-entropy loss",
    "fwd+bwd": "loss and gradient",
    "log_loss": "log_loss(t, softmax(x))",
    "read": "one read pass over the logits",
}

PEERS = (
    Peer("forward", "xentc", "xentc.cross_entropy(x, t)", ("xentc",), _xentc_forward),
    Peer("forward", "xentc-torch", "xentc.cross_entropy on torch CPU tensors (DLPack, no copy)",
         ("xentc", "torch"), _xentc_torch_forward),
    Peer("forward", "torch", "torch.nn.functional.cross_entropy(x, t)", ("torch",),
         _torch_forward),
    Peer("forward", "jax", "jax.jit(optax.softmax_cross_entropy_with_integer_labels(x, t)"
         ".mean())", ("jax", "optax"), _jax_forward),
    Peer("forward", "numpy", "max, exp, sum, log and gather: two passes, one core",
         ("numpy",), _numpy_forward),
    Peer("forward", "scipy", "scipy.special.logsumexp(x, axis=1) - x[rows, t], mean",
         ("scipy",), _scipy_forward),
    Peer("fwd+bwd", "xentc", "xentc.cross_entropy_with_grad(x, t, out=x) (in place)",
         ("xentc:cross_entropy_with_grad",), _xentc_fwd_bwd),
    Peer("fwd+bwd", "torch", "F.cross_entropy(x, t).backward(), x.requires_grad, "
         "x.grad = None", ("torch",), _torch_fwd_bwd),
    Peer("fwd+bwd", "jax", "jax.jit(jax.value_and_grad(optax.softmax_cross_entropy_with_"
         "integer_labels(x, t).mean()))",
         ("jax", "optax"), _jax_fwd_bwd),
    Peer("log_loss", "xentc", "xentc.log_loss(t, p, labels=range(C))", ("xentc:log_loss",),
         _xentc_log_loss),
    Peer("log_loss", "sklearn", "sklearn.metrics.log_loss(t, p, labels=range(C))",
         ("sklearn",), _sklearn_log_loss),
    Peer("read", "read", "torch.sum(x) on the threads (NumPy's sum without torch)",
         ("numpy",), _read),
)


def select_peers(tasks, names=None):
    """The peers of `tasks` to run, and those that cannot run.

    Parameters
    ----------
    tasks : sequence of str
        Keys of `TASKS`; the read pass is always added.
    names : collection of str, optional
        Peer names to keep besides xentc and the read pass (default: all).

    Returns
    -------
    run : list of Peer
        The peers that can run, in `PEERS` order. A task whose xentc peer
        cannot run has nothing to be compared with, so none of its peers do.
    missing : dict
        ``{peer key: missing requirement}`` for the wanted peers that cannot
        run (library not installed, or xentc built without the function).

    Raises
    ------
    ValueError
        An unknown task or peer name.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; known: {list(TASKS)}")
    known = {p.name for p in PEERS}
    if names is not None and set(names) - known:
        raise ValueError(f"unknown peer(s) {sorted(set(names) - known)}; "
                         f"known: {sorted(known)}")
    wanted = [p for p in PEERS if p.task in set(tasks) | {"read"}
              and (names is None or p.name in names or p.name in ("xentc", "read"))]
    missing = {p.key: why for p in wanted if (why := p.missing()) is not None}
    runnable = {p.task for p in wanted if p.name in ("xentc", "read") and p.key not in missing}
    return [p for p in wanted if p.task in runnable and p.key not in missing], missing
