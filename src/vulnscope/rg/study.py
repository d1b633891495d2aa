"""The RG vulnerability study of a deep RBM classifier over many inputs, and against depth."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import check_int, check_seed
from vulnscope.diagnostics.fisher import logit_jacobian
from vulnscope.errors import InvalidArgumentError
from vulnscope.rbm.network import DeepRBM
from vulnscope.rg.analysis import InputRG, OperatorChoice, analyse_input, choose_operators
from vulnscope.rg.distance import class_change_distances, mean_field_gradient_directions

__all__ = ["DepthStudy", "RGReport", "depth_study", "mean_field_fisher", "rg_analysis"]

logger = logging.getLogger(__name__)


def mean_field_fisher(network: DeepRBM, x: Tensor) -> Tensor:
    """Input Fisher information of the mean-field surrogate by autograd: (B, n_0, n_0).

    ``F = Jᵀ (diag p - p pᵀ) J`` with ``J`` the Jacobian of the mean-field log-probabilities;
    the cross-check of the chain-rule F (RG.md section 4), not the method.
    """
    log_probs, jacobian = logit_jacobian(network, network.flatten_input(x))
    probs = log_probs.exp().double()
    metric = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    jacobian = jacobian.double()
    fisher: Tensor = jacobian.transpose(1, 2) @ metric @ jacobian
    return fisher


def _mean_and_error(values: Tensor) -> tuple[float, float]:
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return math.nan, math.nan
    error = float(finite.std() / math.sqrt(finite.numel())) if finite.numel() > 1 else 0.0
    return float(finite.mean()), error


def _median(values: Tensor) -> float:
    return float(values.double().nanmedian()) if values.numel() else math.nan


@dataclass(frozen=True)
class RGReport:
    """The RG analysis of a set of inputs (one row per analysed input).

    Attributes:
        depth: N.
        widths: the network's layer widths below the labels.
        operators: the operator labels of the hidden levels.
        indices: (B,) positions of the analysed inputs in the ``x`` given.
        labels, predictions: (B,) true classes and the sampled pass's classes.
        leading, leading_stderr: (B, N-1) leading |eigenvalue| of ``T^(2..N-1)`` and the
            leading singular value of the label layer ``T^(N)``, with jackknife errors.
        singular: (B, N-1) leading singular value of each ``T^(k)``.
        relevant: (B, N-2) relevant eigenvalues per square hidden layer.
        product_norm, product_norm_stderr: (B,) ``||T^(N) ⋯ T^(2)||_2``.
        fisher_eigenvalues, fisher_stderr: (B, k) top eigenvalues of the chain-rule FIM.
        fisher_eigenvectors: (B, k, n_0).
        mean_field_alignment: (B,) |cos| between the chain-rule v_1 and the mean-field FIM's.
        distances: {"fisher", "gradient", "random"} -> (B,) L2 class-change distance along
            v_1, along the mean-field loss gradient, and the median over random directions.
        fisher_sign: (B,) +1 or -1: the sign of v_1 along which the class changes first.
        skipped: inputs left out because the network was certain of them (no label varied).

    """

    depth: int
    widths: list[int]
    operators: list[str]
    indices: Tensor
    labels: Tensor
    predictions: Tensor
    leading: Tensor
    leading_stderr: Tensor
    singular: Tensor
    relevant: Tensor
    product_norm: Tensor
    product_norm_stderr: Tensor
    fisher_eigenvalues: Tensor
    fisher_stderr: Tensor
    fisher_eigenvectors: Tensor
    mean_field_alignment: Tensor
    distances: dict[str, Tensor]
    fisher_sign: Tensor
    skipped: int

    def layer_summary(self) -> list[dict[str, Any]]:
        """Per layer k = 2..N: averages over the analysed inputs.

        The mean leading magnitude, its standard error over inputs, the typical (median)
        jackknife error of one input's value, and the mean number of relevant eigenvalues.
        """
        rows = []
        for index in range(self.leading.shape[1]):
            mean, spread = _mean_and_error(self.leading[:, index])
            square = index < self.relevant.shape[1]
            rows.append(
                {
                    "layer": index + 2,
                    "kind": "eigenvalue" if square else "singular value (label layer)",
                    "leading_mean": mean,
                    "leading_stderr_over_inputs": spread,
                    "leading_jackknife_median": _median(self.leading_stderr[:, index]),
                    "singular_mean": _mean_and_error(self.singular[:, index])[0],
                    "relevant_mean": float(self.relevant[:, index].float().mean())
                    if square
                    else math.nan,
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        """Averages over the analysed inputs."""
        norm, norm_err = _mean_and_error(self.product_norm)
        return {
            "inputs": int(self.labels.numel()),
            "skipped_certain": self.skipped,
            "accuracy_sampled": float((self.labels == self.predictions).float().mean()),
            "layers": self.layer_summary(),
            "product_norm_mean": norm,
            "product_norm_stderr": norm_err,
            "fisher_top_median": _median(self.fisher_eigenvalues[:, 0]),
            "mean_field_alignment_median": _median(self.mean_field_alignment),
            "class_change_distance_median": {k: _median(v) for k, v in self.distances.items()},
            "class_change_found_fraction": {
                k: float(torch.isfinite(v).float().mean()) for k, v in self.distances.items()
            },
        }

    def per_class(self) -> dict[str, dict[str, Any]]:
        """The same averages for the inputs of each true class."""
        out: dict[str, dict[str, Any]] = {}
        for cls in sorted(set(self.labels.tolist())):
            rows = self.labels == cls
            out[str(cls)] = {
                "inputs": int(rows.sum()),
                "leading_mean": [_mean_and_error(col)[0] for col in self.leading[rows].t()],
                "product_norm_mean": _mean_and_error(self.product_norm[rows])[0],
                "fisher_top_median": _median(self.fisher_eigenvalues[rows, 0]),
                "class_change_distance_median": {
                    k: _median(v[rows]) for k, v in self.distances.items()
                },
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (infinite distances become None)."""

        def listed(t: Tensor) -> Any:
            return (
                [None if isinstance(v, float) and not math.isfinite(v) else v for v in t.tolist()]
                if t.ndim == 1
                else [listed(r) for r in t]
            )

        return {
            "depth": self.depth,
            "widths": self.widths,
            "operators": {"count": len(self.operators), "labels": self.operators},
            "summary": _finite(self.summary()),
            "per_class": _finite(self.per_class()),
            "per_input": {
                "indices": self.indices.tolist(),
                "labels": self.labels.tolist(),
                "predictions": self.predictions.tolist(),
                "leading": listed(self.leading),
                "leading_stderr": listed(self.leading_stderr),
                "product_norm": listed(self.product_norm),
                "product_norm_stderr": listed(self.product_norm_stderr),
                "fisher_eigenvalues": listed(self.fisher_eigenvalues),
                "fisher_stderr": listed(self.fisher_stderr),
                "mean_field_alignment": listed(self.mean_field_alignment),
                "distances": {k: listed(v) for k, v in self.distances.items()},
            },
        }


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rg_analysis(
    network: DeepRBM,
    x: Tensor,
    y: Tensor,
    *,
    operators: OperatorChoice = "pairs",
    samples: int = 10_000,
    blocks: int = 20,
    top_k: int = 3,
    random_directions: int = 8,
    max_norm: float = 6.0,
    seed: int = 0,
) -> RGReport:
    """Run :func:`analyse_input` on every input, then measure the class-change distances.

    Args:
        network: a trained :class:`DeepRBM` (depth >= 2, equal hidden widths).
        x: (B, ...) inputs.
        y: (B,) their classes.
        operators: operator set of the hidden levels (:func:`choose_operators`).
        samples: chains per input.
        blocks: jackknife blocks.
        top_k: Fisher eigenpairs kept.
        random_directions: random directions per input for the baseline distance.
        max_norm: largest L2 step searched for a class change.
        seed: seed of the chains and of the random directions.

    """
    inputs = network.flatten_input(x).detach()
    if not isinstance(y, Tensor) or y.shape != (inputs.shape[0],):
        raise InvalidArgumentError(f"y must have shape ({inputs.shape[0]},)")
    seed = check_seed(seed) or 0
    random_directions = check_int(random_directions, "random_directions")
    states = None
    if operators == "correlation":
        with torch.no_grad():
            run = network.sample_up(inputs, chains=max(1, 2000 // inputs.shape[0] + 1), seed=seed)
        states = [s.reshape(-1, s.shape[-1]) for s in run.states[1:-1]]
    ops = choose_operators(network, operators, states=states)
    results: list[InputRG] = []
    kept: list[int] = []
    for index in range(inputs.shape[0]):
        try:
            results.append(
                analyse_input(
                    network,
                    inputs[index],
                    ops,
                    samples=samples,
                    blocks=blocks,
                    top_k=top_k,
                    seed=seed + index,
                )
            )
            kept.append(index)
        except InvalidArgumentError as error:
            if "certain" not in str(error):
                raise
        logger.info("RG analysis: input %d of %d", index + 1, inputs.shape[0])
    if not results:
        raise InvalidArgumentError("the network was certain of every input: nothing to analyse")
    chosen = torch.tensor(kept)
    inputs, labels = inputs[chosen], y[chosen]
    predictions = torch.stack([r.label_probs.argmax() for r in results])
    fisher_vectors = torch.stack([r.fisher_eigenvectors for r in results])
    mf = torch.linalg.eigh(mean_field_fisher(network, inputs)).eigenvectors[..., -1]
    alignment = (mf * fisher_vectors[:, 0]).sum(-1).abs()

    generator = make_generator(seed)
    gradient = mean_field_gradient_directions(network, inputs, predictions)
    random = torch.randn(inputs.shape[0], random_directions, inputs.shape[1], generator=generator)
    # every direction is searched both ways: an eigenvector has no sign, and the
    # gradient's sign is only first order (the class may change sooner the other way)
    directions = torch.cat([fisher_vectors[:, :1].float(), gradient[:, None], random], 1)
    count = directions.shape[1]
    both_ways = class_change_distances(
        network,
        inputs,
        torch.cat([directions, -directions], 1),
        max_norm=max_norm,
        seed=seed,
        both_signs=False,
    )
    distances = torch.minimum(both_ways[:, :count], both_ways[:, count:])
    fisher_sign = torch.where(both_ways[:, count] < both_ways[:, 0], -1.0, 1.0)
    return RGReport(
        depth=network.depth,
        widths=network.widths,
        operators=ops.labels,
        indices=chosen,
        labels=labels,
        predictions=predictions,
        leading=torch.stack([r.leading for r in results]),
        leading_stderr=torch.stack([r.leading_stderr for r in results]),
        singular=torch.stack([r.singular for r in results]),
        relevant=torch.stack([r.relevant for r in results]),
        product_norm=torch.tensor([r.product_norm for r in results]),
        product_norm_stderr=torch.tensor([r.product_norm_stderr for r in results]),
        fisher_eigenvalues=torch.stack([r.fisher_eigenvalues for r in results]),
        fisher_stderr=torch.stack([r.fisher_stderr for r in results]),
        fisher_eigenvectors=fisher_vectors,
        mean_field_alignment=alignment,
        fisher_sign=fisher_sign,
        distances={
            "fisher": distances[:, 0],
            "gradient": distances[:, 1],
            "random": distances[:, 2:].nanmedian(1).values
            if random_directions
            else distances[:, 2],
        },
        skipped=len(y) - len(kept),
    )


@dataclass(frozen=True)
class DepthStudy:
    """The RG analysis repeated on networks of increasing depth at equal width.

    Attributes:
        depths: the depths N studied.
        accuracy: test accuracy of each network's sampled pass.
        reports: one :class:`RGReport` per depth.

    """

    depths: list[int]
    accuracy: list[float]
    reports: list[RGReport]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready rows, one per depth."""
        rows = []
        for depth, accuracy, report in zip(self.depths, self.accuracy, self.reports, strict=True):
            summary = report.summary()
            rows.append(
                _finite(
                    {
                        "depth": depth,
                        "test_accuracy": accuracy,
                        "leading_per_layer": [row["leading_mean"] for row in summary["layers"]],
                        "leading_stderr_per_layer": [
                            row["leading_stderr_over_inputs"] for row in summary["layers"]
                        ],
                        "singular_per_layer": [row["singular_mean"] for row in summary["layers"]],
                        "product_norm_mean": summary["product_norm_mean"],
                        "product_norm_stderr": summary["product_norm_stderr"],
                        "fisher_top_median": summary["fisher_top_median"],
                        "class_change_distance_median": summary["class_change_distance_median"],
                        "inputs": summary["inputs"],
                    }
                )
            )
        return {"rows": rows}


def depth_study(
    depths: Sequence[int],
    x: Tensor,
    y: Tensor,
    *,
    width: int = 64,
    test: tuple[Tensor, Tensor] | None = None,
    network_factory: Any = None,
    **analysis: Any,
) -> DepthStudy:
    """:func:`rg_analysis` on a network of each depth (trained or loaded by ``network_factory``).

    Args:
        depths: depths N >= 2.
        x: (B, ...) inputs analysed at every depth.
        y: (B,) their classes.
        width: hidden width of every network.
        test: (inputs, labels) for each network's accuracy; defaults to ``(x, y)``.
        network_factory: ``f(depth, width) -> DeepRBM``; default
            :func:`vulnscope.rbm.pretrained.pretrained_deep_rbm` with ``seed``.
        **analysis: keyword arguments of :func:`rg_analysis` (``seed`` included).

    """
    if network_factory is None:
        from vulnscope.rbm.pretrained import pretrained_deep_rbm

        seed = analysis.get("seed", 0)

        def network_factory(depth: int, width: int) -> DeepRBM:
            return pretrained_deep_rbm(depth=depth, width=width, seed=seed)

    test_x, test_y = test if test is not None else (x, y)
    studied, accuracy, reports = [], [], []
    for depth in depths:
        depth = check_int(depth, "depth", minimum=2)
        network = network_factory(depth, width)
        predicted = network.classify(test_x, chains=256, seed=0).argmax(1)
        accuracy.append(float((predicted == test_y).float().mean()))
        reports.append(rg_analysis(network, x, y, **analysis))
        studied.append(depth)
        logger.info("depth %d done", depth)
    return DepthStudy(studied, accuracy, reports)
