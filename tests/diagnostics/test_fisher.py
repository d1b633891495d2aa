"""The input Fisher information against ``Jᵀ (diag p - p pᵀ) J`` built from autograd's Jacobian."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.diagnostics import input_fisher, logit_jacobian
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError


def tiny_cnn(seed: int, activation: type[nn.Module] = nn.Tanh, classes: int = 5) -> nn.Module:
    """Conv2d(1 -> 2, 3x3) on (1, 4, 4) inputs, an activation, Linear(32 -> classes)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1),
            activation(),
            nn.Flatten(),
            nn.Linear(32, classes),
        )
    return model.double().eval()


# (model, input shape, classes)
CASES = {
    "mlp-tanh": (lambda: tiny_classifier(0, (1, 2, 3), 4), (1, 2, 3), 4),
    "mlp-wide": (lambda: tiny_classifier(1, (7,), 6, hidden=12), (7,), 6),
    "cnn-tanh": (lambda: tiny_cnn(2), (1, 4, 4), 5),
    "cnn-relu": (lambda: tiny_cnn(3, nn.ReLU), (1, 4, 4), 5),
}


def full_jacobian(model, x: torch.Tensor) -> torch.Tensor:
    """(N, C, n) from torch.autograd.functional.jacobian, one sample at a time."""
    rows = [
        torch.autograd.functional.jacobian(lambda sample: model(sample[None])[0], x[i])
        for i in range(x.shape[0])
    ]
    return torch.stack(rows).flatten(2)


def explicit_fisher(model, x: torch.Tensor) -> torch.Tensor:
    """F = Jᵀ (diag p - p pᵀ) J: (N, n, n)."""
    jacobian = full_jacobian(model, x)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    metric = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return jacobian.transpose(1, 2) @ metric @ jacobian


def top_eigh(matrices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenvalues (N, k) descending and eigenvectors (N, k, n)."""
    values, vectors = torch.linalg.eigh(matrices)
    return values.flip(1)[:, :k], vectors.flip(2)[:, :, :k].transpose(1, 2)


def predicted_class_gradient(model, x: torch.Tensor) -> torch.Tensor:
    """(N, n) input gradient of -log p of the class the model predicts."""
    inputs = x.clone().requires_grad_(True)
    log_p = torch.log_softmax(model(inputs), dim=1)
    chosen = log_p.gather(1, log_p.argmax(1, keepdim=True))
    (gradient,) = torch.autograd.grad(-chosen.sum(), inputs)
    return gradient.flatten(1)


def assert_same_eigenvectors(vectors, reference, values, *, tol=1e-6):
    """Same top-k subspace (projectors) and, where the gap is clear, the same lines."""
    projector = vectors.transpose(1, 2) @ vectors
    expected = reference.transpose(1, 2) @ reference
    assert torch.allclose(projector, expected, atol=tol)
    cosines = (vectors * reference).sum(2).abs()
    for sample in range(values.shape[0]):
        for i in range(values.shape[1]):
            neighbours = torch.cat([values[sample, :i], values[sample, i + 1 :]])
            gap = float((neighbours - values[sample, i]).abs().min()) if neighbours.numel() else 1
            if gap > 1e-3 * float(values[sample, 0]):
                assert abs(float(cosines[sample, i]) - 1) < tol


@pytest.mark.parametrize("case", list(CASES))
def test_exact_method_matches_the_explicit_fisher(case):
    build, shape, classes = CASES[case]
    model = build()
    x = random_inputs(10, 4, shape, (-1.0, 1.0))
    k = classes - 1
    result = input_fisher(model, x, k=k, method="exact")
    fisher = explicit_fisher(model, x)
    values, vectors = top_eigh(fisher, k)
    assert result.method == "exact"
    assert result.eigenvalues.shape == (4, k) and result.eigenvalues.dtype == torch.float64
    assert result.eigenvectors.shape == (4, k, *shape)
    scale = float(values.max())
    assert scale > 1e-3  # a real comparison, not of two zeros
    assert torch.allclose(result.eigenvalues, values, rtol=0, atol=1e-10 * scale + 1e-12)
    found = result.eigenvectors.flatten(2)
    assert torch.allclose(found.norm(dim=2), torch.ones(4, k, dtype=torch.float64), atol=1e-12)
    assert_same_eigenvectors(found, vectors, values)
    trace = torch.diagonal(fisher, dim1=1, dim2=2).sum(1)
    assert torch.allclose(result.trace, trace, rtol=1e-10)
    # F has rank C - 1: the top C - 1 eigenvalues carry the whole trace
    assert torch.allclose(result.eigenvalues.sum(1), trace, rtol=1e-10)
    # the trace is of all of F, however few eigenpairs are asked for
    top_only = input_fisher(model, x, k=1, method="exact")
    assert torch.allclose(top_only.trace, trace, rtol=1e-10)
    assert torch.allclose(top_only.eigenvalues, values[:, :1], atol=1e-10 * scale + 1e-12)
    assert torch.equal(result.trace_stderr, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(result.residuals, torch.zeros(4, k, dtype=torch.float64))
    with torch.no_grad():
        assert torch.allclose(result.probabilities, torch.softmax(model(x), 1), atol=1e-15)


@pytest.mark.parametrize("case", list(CASES))
def test_lanczos_method_matches_the_exact_method(case):
    build, shape, classes = CASES[case]
    model = build()
    x = random_inputs(11, 5, shape, (-1.0, 1.0))
    k = classes - 1
    exact = input_fisher(model, x, k=k, method="exact")
    iterative = input_fisher(model, x, k=k, method="lanczos", probes=64, seed=1)
    assert iterative.method == "lanczos"
    scale = float(exact.eigenvalues.max())
    assert torch.allclose(iterative.eigenvalues, exact.eigenvalues, atol=1e-9 * scale)
    assert float(iterative.residuals.max()) < 1e-7 * scale
    assert_same_eigenvectors(
        iterative.eigenvectors.flatten(2), exact.eigenvectors.flatten(2), exact.eigenvalues
    )
    # both paths orient every eigenvector the same way, so they agree with their signs
    assert torch.allclose(iterative.eigenvectors, exact.eigenvectors, atol=1e-6)
    # the trace is a Hutchinson estimate: within three of its standard errors
    assert bool((iterative.trace_stderr > 0).all())
    assert bool(((iterative.trace - exact.trace).abs() <= 3 * iterative.trace_stderr).all())


def test_lanczos_needs_only_c_steps_because_the_rank_is_c_minus_one():
    model, x = tiny_cnn(4), random_inputs(12, 3, (1, 4, 4), (-1.0, 1.0))
    exact = input_fisher(model, x, k=4, method="exact")
    few = input_fisher(model, x, k=4, method="lanczos", steps=5)  # 5 classes, n = 16
    scale = float(exact.eigenvalues.max())
    assert torch.allclose(few.eigenvalues, exact.eigenvalues, atol=1e-9 * scale)


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_eigenvectors_point_uphill_for_the_predicted_class(method):
    model, x = tiny_cnn(5), random_inputs(13, 6, (1, 4, 4), (-1.0, 1.0))
    result = input_fisher(model, x, k=4, method=method)
    gradient = predicted_class_gradient(model, x)
    inner = torch.einsum("bkn,bn->bk", result.eigenvectors.flatten(2), gradient)
    assert bool((inner >= -1e-12).all())
    assert bool((inner[:, 0] > 1e-6).all())  # not vacuous: the top direction is uphill
    # first order: a small step along +v1 raises -log p of the predicted class
    with torch.no_grad():
        predicted = model(x).argmax(1, keepdim=True)
        before = -torch.log_softmax(model(x), 1).gather(1, predicted)
        moved = x + 1e-4 * result.eigenvectors[:, 0]
        after = -torch.log_softmax(model(moved), 1).gather(1, predicted)
    assert bool((after > before).all())


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_batch_size_chunks_give_the_same_result(method):
    model, x = tiny_classifier(6, (5,), 4), random_inputs(14, 5, (5,), (-1.0, 1.0))
    whole = input_fisher(model, x, k=3, method=method, batch_size=None)
    chunked = input_fisher(model, x, k=3, method=method, batch_size=2)
    assert torch.allclose(chunked.eigenvalues, whole.eigenvalues, rtol=1e-9, atol=1e-13)
    assert torch.allclose(chunked.eigenvectors, whole.eigenvectors, atol=1e-6)
    assert torch.allclose(chunked.probabilities, whole.probabilities, atol=1e-15)
    if method == "exact":
        assert torch.allclose(chunked.trace, whole.trace, rtol=1e-12)


def test_same_seed_same_lanczos_result_and_the_seed_matters():
    model, x = tiny_classifier(7, (6,), 4), random_inputs(15, 3, (6,), (-1.0, 1.0))
    first = input_fisher(model, x, k=2, method="lanczos", seed=3)
    second = input_fisher(model, x, k=2, method="lanczos", seed=3)
    other = input_fisher(model, x, k=2, method="lanczos", seed=4)
    assert torch.equal(first.eigenvalues, second.eigenvalues)
    assert torch.equal(first.eigenvectors, second.eigenvectors)
    assert torch.equal(first.trace, second.trace)
    assert not torch.equal(first.trace, other.trace)  # Hutchinson probes come from the seed


def test_auto_is_exact_for_few_classes_and_float32_keeps_its_dtype():
    model = tiny_classifier(8, (4,), 3, dtype=torch.float32)
    x = random_inputs(16, 2, (4,), (-1.0, 1.0), dtype=torch.float32)
    result = input_fisher(model, x, k=2)
    assert result.method == "exact"
    assert result.eigenvectors.dtype == torch.float32
    assert result.eigenvalues.dtype == torch.float64
    reference = torch.linalg.eigvalsh(explicit_fisher(model.double(), x.double())).flip(1)[:, :2]
    assert torch.allclose(result.eigenvalues, reference, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("vectorize", [None, True, False])
@pytest.mark.parametrize("case", ["mlp-tanh", "cnn-relu"])
def test_logit_jacobian_is_autograds_jacobian(case, vectorize):
    build, shape, classes = CASES[case]
    model = build()
    x = random_inputs(17, 3, shape, (-1.0, 1.0))
    logits, jacobian = logit_jacobian(model, x, vectorize=vectorize)
    assert jacobian.shape == (3, classes, *shape)
    assert not logits.requires_grad and not jacobian.requires_grad
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-15)
    assert torch.allclose(jacobian.flatten(2), full_jacobian(model, x), atol=1e-12)


class _SquareCallingItem(torch.autograd.Function):
    """x², with a backward that calls ``.item()``: fine for autograd, not for vmap."""

    @staticmethod
    def forward(x):
        return x**2

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        two = 2.0 + 0.0 * float(grad.abs().sum().item())
        return two * x * grad


class _SquareOldStyle(torch.autograd.Function):
    """x² as an autograd.Function without setup_context: no torch.func transform accepts it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class _WithFunction(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.linear = nn.Linear(3, 4).double()

    def forward(self, x):
        return self.linear(self.function.apply(x))


@pytest.mark.parametrize("function", [_SquareCallingItem, _SquareOldStyle])
def test_logit_jacobian_falls_back_to_a_loop_when_vmap_fails(caplog, function):
    """A backward calling .item() defeats vmap; an old-style Function defeats torch.func."""
    model = _WithFunction(function).eval()
    x = random_inputs(18, 2, (3,), (-1.0, 1.0))
    with caplog.at_level(logging.DEBUG, logger="vulnscope.diagnostics.fisher"):
        _, jacobian = logit_jacobian(model, x, vectorize=True)
    assert "looping" in caplog.text
    assert torch.allclose(jacobian, full_jacobian(model, x), atol=1e-12)
    _, default = logit_jacobian(model, x)
    assert torch.allclose(default, jacobian, atol=1e-14)


def duplicate_class_model() -> nn.Module:
    """Classes 0 and 1 have identical logits: F has rank 1, not C - 1 = 2."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        model[2].weight[1] = model[2].weight[0]
        model[2].bias[1] = model[2].bias[0]
    return model.eval()


def test_lanczos_eigenpairs_of_a_rank_deficient_fisher_are_orthonormal_eigenpairs():
    model, x = duplicate_class_model(), random_inputs(23, 4, (5,), (-1.0, 1.0))
    result = input_fisher(model, x, k=2, method="lanczos")
    fisher = explicit_fisher(model, x)
    scale = float(result.eigenvalues.max())
    assert float(result.eigenvalues[:, 1].abs().max()) < 1e-12 * scale  # rank 1
    vectors = result.eigenvectors
    gram = vectors @ vectors.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(2, dtype=torch.float64).expand(4, -1, -1), atol=1e-8)
    image = torch.einsum("bij,bkj->bki", fisher, vectors)
    assert float((image - result.eigenvalues[..., None] * vectors).norm(dim=2).max()) < 1e-9 * scale


def test_exact_eigenpairs_of_a_rank_deficient_fisher_are_orthonormal_eigenpairs():
    model, x = duplicate_class_model(), random_inputs(23, 4, (5,), (-1.0, 1.0))
    result = input_fisher(model, x, k=2, method="exact")
    fisher = explicit_fisher(model, x)
    scale = float(result.eigenvalues.max())
    vectors = result.eigenvectors
    gram = vectors @ vectors.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(2, dtype=torch.float64).expand(4, -1, -1), atol=1e-8)
    image = torch.einsum("bij,bkj->bki", fisher, vectors)
    assert float((image - result.eigenvalues[..., None] * vectors).norm(dim=2).max()) < 1e-9 * scale


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_saturated_softmax_has_zero_fisher_and_finite_unit_eigenvectors(method):
    model = tiny_classifier(11, (4,), 3)
    with torch.no_grad():
        model[3].weight.mul_(1e4)
        model[3].bias.mul_(1e4)
    x = random_inputs(24, 3, (4,), (-1.0, 1.0))
    result = input_fisher(model, x, k=2, method=method)
    assert torch.equal(result.eigenvalues, torch.zeros(3, 2, dtype=torch.float64))
    assert torch.equal(result.trace, torch.zeros(3, dtype=torch.float64))
    norms = result.eigenvectors.norm(dim=2)
    assert torch.allclose(norms, torch.ones(3, 2, dtype=torch.float64), atol=1e-12)


def test_k_beyond_the_rank_is_refused():
    model, x = tiny_classifier(9, (6,), 4), random_inputs(20, 2, (6,), (-1.0, 1.0))
    with pytest.raises(InvalidArgumentError, match=r"min\(C - 1, n\) = 3.*4-class.*got k=4"):
        input_fisher(model, x, k=4)
    input_fisher(model, x, k=3)  # C - 1 is allowed
    many_classes = tiny_classifier(9, (2,), 10)
    with pytest.raises(InvalidArgumentError, match=r"min\(C - 1, n\) = 2.*on 2 features"):
        input_fisher(many_classes, random_inputs(20, 2, (2,), (-1.0, 1.0)), k=3)


def test_invalid_inputs_get_clear_errors():
    model, x = tiny_classifier(10, (6,), 4), random_inputs(21, 2, (6,), (-1.0, 1.0))
    with pytest.raises(InvalidTypeError, match=r"x must be a torch.Tensor"):
        input_fisher(model, x.tolist())
    with pytest.raises(ModelError, match=r"first sample\) must return logits of shape \(N, C\)"):
        input_fisher(lambda inputs: inputs.sum(1), x)
    with pytest.raises(ModelError, match=r"logits of shape \(N, C\) = \(2, C\).*\(1, 4\)"):
        input_fisher(lambda inputs: model(inputs)[:1], x)  # drops all but one sample
    with pytest.raises(ModelError, match=r"C >= 2"):
        input_fisher(lambda inputs: inputs[:, :1], x)
    with pytest.raises(InvalidArgumentError, match=r"method must be one of \['auto', 'exact'"):
        input_fisher(model, x, method="newton")
    with pytest.raises(InvalidArgumentError, match=r"batch_size must be an integer >= 1"):
        input_fisher(model, x, batch_size=0)
    with pytest.raises(InvalidArgumentError, match=r"steps must be at least k = 3, got 2"):
        input_fisher(model, x, k=3, method="lanczos", steps=2)


def test_batch_norm_in_training_mode_is_refused_and_left_as_it_was():
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double().train()
    x = random_inputs(22, 4, (6,), (-1.0, 1.0))
    with pytest.raises(ModelError, match=r"treat each sample independently.*model.eval\(\)"):
        input_fisher(model, x)
    assert model.training
    model.eval()
    assert input_fisher(model, x, k=2).eigenvalues.shape == (4, 2)
