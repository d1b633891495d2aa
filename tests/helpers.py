"""Shared test fixtures that are plain functions: tiny models, the attack catalogue, data files."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vulnscope.attacks import (
    APGD,
    BIM,
    FAB,
    FGSM,
    JSMA,
    LBFGS,
    PGD,
    Attack,
    CarliniWagner,
    DeepFool,
    FisherAttack,
    Square,
    StAdv,
    UniversalPerturbation,
)


def tiny_classifier(
    seed: int,
    in_shape: tuple[int, ...] = (1, 2, 3),
    classes: int = 4,
    *,
    hidden: int = 8,
    dtype: torch.dtype = torch.float64,
) -> nn.Sequential:
    """A small random MLP (flatten, linear, tanh, linear) in eval mode."""
    features = 1
    for size in in_shape:
        features *= size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, classes)
        )
    return model.to(dtype).eval()


def random_inputs(
    seed: int, n: int, in_shape: tuple[int, ...], bounds: tuple[float, float], dtype=torch.float64
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    unit = torch.rand((n, *in_shape), generator=generator, dtype=dtype)
    return bounds[0] + (bounds[1] - bounds[0]) * unit


AttackBuilder = Callable[..., Attack]

# Every attack of the suite, in the configurations the shared contract tests exercise.
# Each builder takes norm, eps, targeted and bounds. A minimal attack takes eps as its cap;
# an attack without a budget (JSMA) ignores it, and the tests skip the eps-ball checks.
ATTACK_CASES: list[tuple[str, tuple[str, ...], AttackBuilder]] = [
    ("FGSM", ("linf", "l2", "l1"), lambda **kw: FGSM(**kw)),
    ("FGSM-margin", ("linf",), lambda **kw: FGSM(loss="margin", **kw)),
    ("BIM", ("linf", "l2", "l1"), lambda **kw: BIM(steps=5, **kw)),
    ("BIM-default-schedule", ("linf",), lambda **kw: BIM(**kw)),
    ("PGD", ("linf", "l2", "l1"), lambda **kw: PGD(steps=5, seed=1, **kw)),
    ("PGD-classic", ("linf", "l2", "l1"), lambda **kw: PGD(steps=5, random_start=False, **kw)),
    ("PGD-early-stop", ("linf", "l2", "l1"), lambda **kw: PGD(steps=5, early_stop=True, **kw)),
    ("PGD-restarts", ("linf", "l2", "l1"), lambda **kw: PGD(steps=3, restarts=3, **kw)),
    ("PGD-dlr", ("linf",), lambda **kw: PGD(steps=5, loss="dlr", **kw)),
    ("APGD-CE", ("linf", "l2"), lambda **kw: APGD(steps=10, **kw)),
    ("APGD-DLR", ("linf", "l2"), lambda **kw: APGD(steps=10, loss="dlr", **kw)),
    ("APGD-no-early-stop", ("linf", "l2"), lambda **kw: APGD(steps=10, early_stop=False, **kw)),
    ("APGD-restarts", ("linf",), lambda **kw: APGD(steps=5, restarts=2, **kw)),
    ("Fisher", ("l2", "linf"), lambda **kw: FisherAttack(**kw)),
    # --- Carlini-Wagner, L-BFGS ---
    ("CW", ("l2", "linf"), lambda **kw: CarliniWagner(steps=10, binary_search_steps=3, **kw)),
    (
        "CW-confidence-no-abort",
        ("l2", "linf"),
        lambda **kw: CarliniWagner(
            steps=5, binary_search_steps=3, confidence=0.3, abort_early=False, **kw
        ),
    ),
    ("LBFGS", ("l2",), lambda **kw: LBFGS(c_search_steps=3, max_iterations=10, **kw)),
    # --- DeepFool, FAB ---
    ("DeepFool", ("l2", "linf"), lambda **kw: DeepFool(steps=10, **kw)),
    (
        "DeepFool-classic",
        ("l2", "linf"),
        lambda **kw: DeepFool(steps=10, candidates=3, refine=0, **kw),
    ),
    ("FAB", ("linf", "l2", "l1"), lambda **kw: FAB(steps=10, **kw)),
    ("FAB-restarts", ("linf", "l2"), lambda **kw: FAB(steps=5, restarts=3, seed=1, **kw)),
    # --- Square, JSMA ---
    ("Square", ("linf", "l2"), lambda **kw: Square(queries=30, **kw)),
    (
        "Square-restarts-ce",
        ("linf", "l2"),
        lambda **kw: Square(queries=8, restarts=2, loss="ce", **kw),
    ),
    # JSMA has no budget and works in L0: its builders drop norm and eps.
    ("JSMA", ("l0",), lambda norm, eps, **kw: JSMA(gamma=1.0, **kw)),
    (
        "JSMA-F-decreasing",
        ("l0",),
        lambda norm, eps, **kw: JSMA(theta=-0.4, gamma=0.7, jacobian="softmax", **kw),
    ),
    # --- stAdv: a flow field; norm and eps are those of the reported pixel change ---
    ("StAdv", ("l2",), lambda **kw: StAdv(steps=5, step_size=0.1, **kw)),
    # --- universal perturbations ---
    (
        "Universal",
        ("linf", "l2"),
        lambda **kw: UniversalPerturbation(max_epochs=2, batch_size=2, **kw),
    ),
]

NORM_ORDER = {"linf": float("inf"), "l2": 2.0, "l1": 1.0, "l0": 0.0}


def reference_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm computed by torch.linalg, independently of vulnscope."""
    return torch.linalg.vector_norm(delta.flatten(1), ord=NORM_ORDER[norm], dim=1)


def affine_binary_classifier(
    margins: torch.Tensor, dim: int = 12, seed: int = 0
) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """Logits ``(0, w.x)`` and points with ``w.x = -margin``: class 0, flipped at ``w.x = 0``.

    The minimal perturbation of point i is ``margins[i] / |w|_*`` (the dual norm): along
    ``w`` in L2, along ``sign(w)`` in L∞. Returns ``(model, x, w)``, float64.
    """
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=generator, dtype=torch.float64)
    model = nn.Linear(dim, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        model.bias.zero_()
    x = torch.randn(margins.shape[0], dim, generator=generator, dtype=torch.float64)
    x = x - ((x @ w + margins) / (w @ w))[:, None] * w
    return model.eval(), x, w


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def check_attack_contract(model, build, x, y, target, *, norm, eps, bounds):
    """Run ``build(...)`` on ``model`` and assert the contract every attack keeps.

    The caller's input and the model's state are untouched; the result lies in the threat
    model; success is what the model says about the returned tensor; the counters are
    consistent; the same seed gives the same result.
    """
    targeted = target is not None
    x_before = x.clone()
    state, modes, grads = _snapshot(model)

    attack = build(norm=norm, eps=eps, targeted=targeted, bounds=bounds)
    result = attack(model, x, y, target=target)

    # The caller's input, the model's weights, buffers, modes and requires_grad are untouched.
    assert torch.equal(x, x_before)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads

    # The result lies in the threat model.
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert ((result.x_adv >= bounds[0]) & (result.x_adv <= bounds[1])).all()
    size = reference_norm(result.x_adv - x, norm)
    torch.testing.assert_close(result.norms, size)
    changed = (result.x_adv != x).flatten(1).double().mean(dim=1)
    torch.testing.assert_close(result.changed_fraction, changed.to(result.changed_fraction.dtype))
    if attack.eps is not None:
        assert (size <= eps * (1 + 1e-9) + 1e-12).all()
        if eps == 0.0:
            assert torch.equal(result.x_adv, x)

    # Success is what the model says about exactly the returned tensor.
    with torch.no_grad():
        logits = model(result.x_adv)
    predicted, classes = logits.argmax(dim=1), logits.shape[1]
    expected = predicted == target if targeted else predicted != y
    assert torch.equal(result.success, expected)
    # A forward pass feeds at most one backward pass per logit (a full Jacobian).
    assert result.gradient_evals <= classes * result.forward_evals
    # Nothing to attack where every sample is already adversarial (misclassified, or at
    # its target): an attack that stops early there need not differentiate at all.
    clean = model(x).argmax(1)
    attacked = eps > 0 and not (clean == target if targeted else clean != y).all()
    if attack.gradient_free:
        assert result.gradient_evals == 0
    elif attacked:
        assert result.gradient_evals >= 1

    # Same seed, same result.
    again = build(norm=norm, eps=eps, targeted=targeted, bounds=bounds)(model, x, y, target=target)
    assert torch.equal(again.x_adv, result.x_adv)


IDX_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    """Write an IDX file the way the MNIST distribution does (big-endian header and data)."""
    big_endian = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, IDX_CODES[big_endian.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + big_endian.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def pairwise_auc(clean: torch.Tensor, adversarial: torch.Tensor) -> float:
    """ROC AUC of detector scores, independent of vulnscope's ``roc_curve``.

    P(an adversarial score > a clean score), ties counting half (the Mann-Whitney form).
    """
    difference = adversarial[:, None] - clean[None, :]
    return float((difference > 0).double().mean() + 0.5 * (difference == 0).double().mean())
