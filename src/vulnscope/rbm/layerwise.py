r"""Layerwise training of a deep RBM by the objective of Kenway (2018), eq. 14.

Each RBM ``t_k(h_k, h_{k-1})`` is fitted, with the other layers held fixed, to minimise

.. math::
    D_{KL}\Big(\textstyle\sum_{x, y} \tilde q_k(h_k | y)\, q_{k-1}(h_{k-1} | x)\,
    p(x, y) \,\Big\|\, t_k(h_k, h_{k-1})\Big)

(Kenway 2018, eq. 14): the data are pairs ``(h_{k-1}, h_k)`` with ``h_{k-1}`` drawn by
the classification pass from a training input ``x`` and ``h_k`` drawn by the generation
pass from its label ``y``. Minimising the KL over ``t_k`` is maximum likelihood of the
*joint* of a bipartite Boltzmann machine whose two sides are both observed, with gradient
``<h_k h_{k-1}ᵀ>_data - <h_k h_{k-1}ᵀ>_model``; the model term comes from Gibbs sampling
(CD-k or persistent CD). The top layer's hidden side is the softmax label group, so its
Gibbs chain samples one-hot labels. Sweeps over the layers repeat until the objective
settles.

``objective="conditional"`` instead maximises the conditional likelihood
``log t_k(h_k | h_{k-1})`` of the same pairs: the "naive" variant, kept for comparison
(it degrades a greedily trained stack towards chance level within one sweep; see
``experiments/eq14_layerwise.py``).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional

from vulnscope._random import make_generator
from vulnscope._validation import (
    check_bool,
    check_choice,
    check_int,
    check_real,
    check_seed,
)
from vulnscope.errors import InvalidArgumentError
from vulnscope.rbm.network import DeepRBM
from vulnscope.rbm.rbm import RBM
from vulnscope.rbm.training import (
    check_training_data,
    gibbs_model_statistics,
    likelihood_gradients,
    momentum_step,
)

__all__ = ["LayerwiseResult", "layer_pairs", "pair_objective", "train_layerwise_kl"]

logger = logging.getLogger(__name__)

Objective = Literal["joint", "conditional"]
Order = Literal["top_down", "bottom_up"]

_MONITOR_SEED_OFFSET = 7919


@dataclass(frozen=True)
class LayerwiseResult:
    """What :func:`train_layerwise_kl` did, sweep by sweep.

    Layers are indexed ``0 .. N-1`` from the input upward (index ``j`` is Kenway's layer
    ``k = j + 1``, joining ``h_j`` to ``h_{j+1}``).

    Attributes:
        objective: ``objective[s][j]``: the pair objective of layer ``j`` (see
            :func:`pair_objective`: the negative pseudo-log-likelihood of the pairs, in
            nats per pair, a proxy of eq. 14's KL up to the pairs' entropy) measured right
            after layer ``j`` was trained in sweep ``s``, on fresh pairs.
        initial_objective: the same for every layer before the first sweep.
        train_accuracy: accuracy of the sampled classification pass on the training set;
            entry 0 before training, entry ``s + 1`` after sweep ``s``.
        layer_accuracy: ``layer_accuracy[s][j]``: training accuracy right after layer ``j``
            was trained in sweep ``s`` (shows which update breaks or repairs the pass).
        best_sweep: the entry of ``train_accuracy`` with the highest accuracy (0: the
            initial network).
        restored_best: whether the network was reset to the weights of ``best_sweep``.
        converged: whether the relative change of the summed objective between two
            sweeps fell below ``tolerance`` before ``sweeps`` ran out.
        sweeps_run: number of sweeps done.

    """

    objective: list[list[float]]
    initial_objective: list[float]
    train_accuracy: list[float]
    layer_accuracy: list[list[float]]
    best_sweep: int
    restored_best: bool
    converged: bool
    sweeps_run: int


@torch.no_grad()
def layer_pairs(
    network: DeepRBM, inputs: Tensor, labels: Tensor, layer: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One draw of eq. 14's training pairs for layer ``layer`` (0-based).

    Args:
        network: the deep RBM.
        inputs: (S, n_0) flattened training inputs.
        labels: (S,) class indices, or (S, C) output vectors (the generation pass starts
            from any label vector: a clone trained on published outputs uses them).
        layer: index ``j`` of the RBM, joining ``h_j`` (visible) to ``h_{j+1}`` (hidden).
        generator: random generator of both passes.

    Returns:
        ``(visible, hidden)``: visible (S, n_j), binary samples of ``q_j(h_j | x)`` (the
        inputs themselves for ``j = 0``); hidden (S, n_{j+1}), the generation pass's
        conditional means ``E[h_{j+1} | h_{j+2}]`` with ``h_{j+2} ~ q̃_{j+2}(.|y)``
        (Rao-Blackwellised targets: the statistics of eq. 14 are linear in ``h_{j+1}``),
        and the one-hot label for the top layer.

    """
    depth = network.depth
    up = network.sample_up(inputs, chains=1, generator=generator)
    visible = up.states[layer][:, 0, :]
    if layer == depth - 1:
        hidden = (
            labels.to(visible.dtype)
            if labels.is_floating_point()
            else functional.one_hot(labels, network.num_classes).to(visible.dtype)
        )
    else:
        down = network.sample_down(labels, chains=1, generator=generator)
        above = down.states[depth - (layer + 2)][:, 0, :]
        hidden = network.rbms[layer + 1].visible_probs(above)
    return visible, hidden


@torch.no_grad()
def pair_objective(rbm: RBM, visible: Tensor, hidden: Tensor) -> float:
    """Negative pseudo-log-likelihood of pairs under the joint ``t_k``, nats per pair.

    For a bipartite machine with both sides observed every unit's conditional given all
    the others depends only on the opposite side, so the pseudo-log-likelihood is exactly
    ``log t(h | v) + log t(v | h)``. Hidden targets may be probabilities (the expectation
    over ``h`` is then exact, since ``log t(h | v)`` is linear in ``h``). This is a
    tractable proxy of eq. 14's KL (the exact ``log t(h, v)`` needs ``log Z`` of a
    64 x 64 machine); it is zero only if both conditionals are deterministic and right.

    Args:
        rbm: the layer.
        visible: (S, n_visible) binary states.
        hidden: (S, n_hidden) states or probabilities (one-hot rows for a softmax layer).

    """
    field = rbm.hidden_field(visible)
    if rbm.hidden == "softmax":
        hidden_term = -(hidden * field.log_softmax(-1)).sum(-1)
    else:
        hidden_term = functional.binary_cross_entropy_with_logits(
            field, hidden, reduction="none"
        ).sum(-1)
    visible_term = functional.binary_cross_entropy_with_logits(
        rbm.visible_field(hidden), visible, reduction="none"
    ).sum(-1)
    return float((hidden_term + visible_term).mean())


@torch.no_grad()
def _train_layer(
    rbm: RBM,
    draw_pairs: _PairSource,
    *,
    objective: Objective,
    epochs: int,
    batch_size: int,
    lr: float,
    k: int,
    persistent: bool,
    chains: int,
    momentum: float,
    weight_decay: float,
    generator: torch.Generator,
) -> None:
    params = (rbm.weight, rbm.hidden_bias, rbm.visible_bias)
    velocity = [torch.zeros_like(param) for param in params]
    persistent_chains: Tensor | None = None
    for _ in range(epochs):
        visible, hidden = draw_pairs()
        if persistent and persistent_chains is None:
            start = torch.randint(visible.shape[0], (chains,), generator=generator)
            persistent_chains = visible[start].clone()
        order = torch.randperm(visible.shape[0], generator=generator)
        for begin in range(0, visible.shape[0], batch_size):
            batch = order[begin : begin + batch_size]
            v_data, h_data = visible[batch], hidden[batch]
            if objective == "conditional":
                residual = h_data - rbm.hidden_probs(v_data)
                grads = (
                    residual.t() @ v_data / v_data.shape[0] - weight_decay * rbm.weight,
                    residual.mean(0),
                    torch.zeros_like(rbm.visible_bias),
                )
            else:
                v_model, h_model = gibbs_model_statistics(
                    rbm,
                    persistent_chains if persistent_chains is not None else v_data,
                    k,
                    generator,
                )
                if persistent_chains is not None:
                    persistent_chains = v_model
                grads = likelihood_gradients(rbm, v_data, h_data, v_model, h_model, weight_decay)
            momentum_step(params, velocity, grads, lr=lr, momentum=momentum)


class _PairSource:
    """Fresh eq. 14 pairs for one layer on every call (the other layers are fixed)."""

    def __init__(
        self,
        network: DeepRBM,
        inputs: Tensor,
        labels: Tensor,
        layer: int,
        generator: torch.Generator,
    ) -> None:
        self.network, self.inputs, self.labels = network, inputs, labels
        self.layer, self.generator = layer, generator

    def __call__(self) -> tuple[Tensor, Tensor]:
        return layer_pairs(self.network, self.inputs, self.labels, self.layer, self.generator)


@torch.no_grad()
def _accuracy(network: DeepRBM, inputs: Tensor, labels: Tensor, chains: int, seed: int) -> float:
    probs = network.classify(inputs, method="sample", chains=chains, seed=seed)
    if labels.is_floating_point():
        labels = labels.argmax(1)
    return float((probs.argmax(1) == labels).double().mean())


def train_layerwise_kl(
    network: DeepRBM,
    x: Tensor,
    y: Tensor,
    *,
    sweeps: int = 4,
    epochs_per_layer: int = 10,
    lr: float = 0.02,
    k: int = 1,
    persistent: bool = True,
    chains: int = 64,
    tolerance: float = 1e-3,
    seed: int = 0,
    objective: Objective = "joint",
    order: Order = "top_down",
    batch_size: int = 64,
    momentum: float = 0.5,
    weight_decay: float = 1e-4,
    monitor_chains: int = 16,
    restore_best: bool = False,
) -> LayerwiseResult:
    """Train every layer by Kenway's eq. 14, in place, with the others held fixed.

    For layer ``k`` the pairs ``(h_{k-1}, h_k)`` are drawn afresh every epoch,
    ``h_{k-1} ~ q_{k-1}(.|x)`` upward from each training input and ``h_k ~ q̃_k(.|y)``
    downward from its label, and ``t_k`` is fitted to them by stochastic gradient ascent
    with momentum and weight decay (as :func:`~vulnscope.rbm.training.train_rbm`). Sweeps
    visit the layers in ``order`` and stop after ``sweeps`` or once the summed pair
    objective changes by less than ``tolerance`` (relative) between sweeps. Start from a
    greedily pretrained network (:func:`~vulnscope.rbm.training.greedy_pretrain`).

    Args:
        network: (N RBMs, widths ``[n_0, ..., n_{N-1}]``, C labels) the network to train.
        x: (S, ...) training inputs in [0, 1], ``prod(...) == n_0``.
        y: (S,) integer class labels in ``[0, C)``, or (S, C) probability vectors (a
            clone trained on published outputs: the generation pass runs from them and
            the top layer's targets are the vectors themselves; accuracy is measured
            against their arg-max).
        sweeps: maximum number of sweeps over the layers.
        epochs_per_layer: passes over the pairs per layer per sweep.
        lr: learning rate.
        k: Gibbs steps per model-term estimate (CD-k, or steps per update with PCD).
        persistent: persistent chains for the model term instead of CD started at the data.
        chains: number of persistent chains (ignored by CD-k, whose chains are the batch).
        tolerance: relative change of the summed objective below which sweeps stop (0:
            always run ``sweeps``).
        seed: seed of the pairs, minibatches and chains; the same seed gives the same
            weights.
        objective: ``"joint"`` (eq. 14: maximum likelihood of ``t_k(h_k, h_{k-1})``) or
            ``"conditional"`` (likelihood of ``t_k(h_k | h_{k-1})`` only: the naive
            variant, which leaves the visible bias untouched).
        order: ``"top_down"`` (layer N first) or ``"bottom_up"``.
        batch_size: pairs per update.
        momentum: momentum of the updates.
        weight_decay: L2 penalty on the weights.
        monitor_chains: chains per input of the training-accuracy monitor.
        restore_best: reset the network to the sweep with the best training accuracy
            (the initial network included) at the end.

    Returns:
        :class:`LayerwiseResult` with the objective per sweep and layer and the
        training-accuracy history.

    Raises:
        InvalidArgumentError: an argument out of range or of the wrong shape.
        InvalidTypeError: an argument of the wrong type.

    Example:
        >>> from vulnscope.rbm.training import greedy_pretrain
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = (torch.rand(40, 6, generator=gen) < 0.5).float()
        >>> y = (x[:, 0] > 0).long()
        >>> net = greedy_pretrain(DeepRBM([6, 4], 2, seed=0), x, y, epochs=2)
        >>> result = train_layerwise_kl(net, x, y, sweeps=2, epochs_per_layer=2)
        >>> len(result.train_accuracy) == result.sweeps_run + 1
        True

    """
    inputs, labels = check_training_data(network, x, y)
    sweeps = check_int(sweeps, "sweeps")
    epochs_per_layer = check_int(epochs_per_layer, "epochs_per_layer")
    lr = check_real(lr, "lr", minimum=0.0, exclusive=True)
    k = check_int(k, "k")
    persistent = check_bool(persistent, "persistent")
    chains = check_int(chains, "chains")
    tolerance = check_real(tolerance, "tolerance", minimum=0.0)
    checked_seed = check_seed(seed)
    if checked_seed is None:
        raise InvalidArgumentError("seed must be a non-negative integer (not None), got None")
    objective = check_choice(objective, "objective", ("joint", "conditional"))  # type: ignore[assignment]
    order = check_choice(order, "order", ("top_down", "bottom_up"))  # type: ignore[assignment]
    batch_size = check_int(batch_size, "batch_size")
    momentum = check_real(momentum, "momentum", minimum=0.0)
    if momentum >= 1.0:
        raise InvalidArgumentError(f"momentum must be in [0, 1), got {momentum}")
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0.0)
    monitor_chains = check_int(monitor_chains, "monitor_chains")
    restore_best = check_bool(restore_best, "restore_best")

    generator = make_generator(checked_seed)
    monitor_seed = checked_seed + _MONITOR_SEED_OFFSET
    inputs = inputs.to(network.rbms[0].weight.dtype)
    layers = list(range(network.depth))
    if order == "top_down":
        layers.reverse()

    def measure(layer: int) -> float:
        pairs = layer_pairs(network, inputs, labels, layer, generator)
        return pair_objective(network.rbms[layer], *pairs)

    initial = [measure(layer) for layer in range(network.depth)]
    history = [_accuracy(network, inputs, labels, monitor_chains, monitor_seed)]
    best_state = copy.deepcopy(network.state_dict()) if restore_best else None
    objectives: list[list[float]] = []
    layer_accuracy: list[list[float]] = []
    converged = False
    previous = math.fsum(initial)
    for sweep in range(sweeps):
        sweep_objective = [math.nan] * network.depth
        sweep_accuracy = [math.nan] * network.depth
        for layer in layers:
            source = _PairSource(network, inputs, labels, layer, generator)
            _train_layer(
                network.rbms[layer],
                source,
                objective=objective,
                epochs=epochs_per_layer,
                batch_size=batch_size,
                lr=lr,
                k=k,
                persistent=persistent,
                chains=chains,
                momentum=momentum,
                weight_decay=weight_decay,
                generator=generator,
            )
            sweep_objective[layer] = measure(layer)
            sweep_accuracy[layer] = _accuracy(network, inputs, labels, monitor_chains, monitor_seed)
        objectives.append(sweep_objective)
        layer_accuracy.append(sweep_accuracy)
        history.append(sweep_accuracy[layers[-1]])
        logger.info(
            "eq. 14 sweep %d: objective %s, training accuracy %.3f",
            sweep + 1,
            [round(v, 3) for v in sweep_objective],
            history[-1],
        )
        if best_state is not None and history[-1] > max(history[:-1]):
            best_state = copy.deepcopy(network.state_dict())
        total = math.fsum(sweep_objective)
        if abs(total - previous) <= tolerance * max(abs(previous), 1e-12):
            converged = True
            break
        previous = total
    best = max(range(len(history)), key=history.__getitem__)
    if best_state is not None:
        network.load_state_dict(best_state)
    return LayerwiseResult(
        objective=objectives,
        initial_objective=initial,
        train_accuracy=history,
        layer_accuracy=layer_accuracy,
        best_sweep=best,
        restored_best=best_state is not None,
        converged=converged,
        sweeps_run=len(objectives),
    )
