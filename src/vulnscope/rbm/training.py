"""Training a deep RBM classifier: greedy contrastive divergence, then fine-tuning.

Greedy layerwise training (Hinton, Osindero and Teh 2006) fits each RBM to samples of
the layer below by contrastive divergence (CD-k, Hinton 2002) or persistent CD
(Tieleman 2008), with momentum and weight decay (Hinton 2010, "A practical guide to
training RBMs"). The label layer is then fitted as a linear read-out of the top hidden
layer. Fine-tuning trains the classification pass end to end while the weights stay RBM
weights: either through the mean-field pass, or through the sampled pass with the
straight-through estimator.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional

from vulnscope._random import make_generator
from vulnscope._validation import (
    check_bool,
    check_choice,
    check_inputs,
    check_int,
    check_real,
    check_targets,
    describe,
)
from vulnscope._validation import check_seed as _check_seed
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.rbm.network import DeepRBM
from vulnscope.rbm.rbm import RBM, sample_bernoulli

__all__ = ["fine_tune", "fit_readout", "greedy_pretrain", "train_rbm"]

logger = logging.getLogger(__name__)

FineTuneMethod = Literal["mean_field", "straight_through"]


def check_states(data: object, name: str, width: int) -> Tensor:
    """Training states: (S, width), S >= 1, finite, in [0, 1] (binary states or means)."""
    checked = check_inputs(data, bounds=(0.0, 1.0), name=name)
    if checked.ndim != 2 or checked.shape[1] != width:
        raise InvalidArgumentError(
            f"{name} must have shape (S, {width}), got {tuple(checked.shape)}"
        )
    return checked


def check_training_data(network: DeepRBM, x: object, y: object) -> tuple[Tensor, Tensor]:
    """Inputs in [0, 1] flattened to (S, n_0), and their targets.

    Targets are class labels (S,) as int64 in range, or probability vectors (S, C) (the
    published outputs a clone is trained on), in the network's dtype.
    """
    if not isinstance(network, DeepRBM):
        raise InvalidTypeError(f"network must be a DeepRBM, got {describe(network)}")
    inputs = network.flatten_input(check_inputs(x, bounds=(0.0, 1.0)))
    targets = check_targets(
        y, n=inputs.shape[0], num_classes=network.num_classes, device=inputs.device
    )
    if targets.is_floating_point():
        targets = targets.to(inputs.dtype)
    return inputs, targets


def target_cross_entropy(log_probs: Tensor, targets: Tensor) -> Tensor:
    """Mean ``-log q(y)`` for labels (S,), or ``-Σ_c t_c log q_c`` for probability targets."""
    if targets.is_floating_point():
        return -(targets * log_probs).sum(-1).mean()
    return functional.nll_loss(log_probs, targets)


def gibbs_model_statistics(
    rbm: RBM, start: Tensor, k: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The model term of the likelihood gradient: ``k`` Gibbs steps from ``start``.

    Returns the visible states reached and their hidden probabilities (which stand in for
    hidden samples in the statistics: lower variance, Hinton 2010, section 3).
    """
    visible = start
    for _ in range(k):
        visible = rbm.sample_visible(rbm.sample_hidden(visible, generator), generator)
    return visible, rbm.hidden_probs(visible)


def likelihood_gradients(
    rbm: RBM,
    v_data: Tensor,
    h_data: Tensor,
    v_model: Tensor,
    h_model: Tensor,
    weight_decay: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``<h vᵀ>_data - <h vᵀ>_model`` (minus weight decay) and the two bias gradients."""
    return (
        h_data.t() @ v_data / v_data.shape[0]
        - h_model.t() @ v_model / v_model.shape[0]
        - weight_decay * rbm.weight,
        h_data.mean(0) - h_model.mean(0),
        v_data.mean(0) - v_model.mean(0),
    )


def momentum_step(
    params: tuple[Tensor, ...],
    velocity: list[Tensor],
    grads: tuple[Tensor, ...],
    *,
    lr: float,
    momentum: float,
) -> None:
    """Gradient ascent with momentum, in place: ``v ← μ v + lr g``, ``θ ← θ + v``."""
    for param, speed, grad in zip(params, velocity, grads, strict=True):
        speed.mul_(momentum).add_(grad, alpha=lr)
        param.add_(speed)


@torch.no_grad()
def train_rbm(
    rbm: RBM,
    data: Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 0.05,
    k: int = 1,
    persistent: bool = False,
    momentum: float = 0.5,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> RBM:
    """Fit an RBM to data by CD-k or persistent CD, in place.

    The gradient of the log-likelihood is ``<h vᵀ>_data - <h vᵀ>_model``; the model term
    comes from ``k`` Gibbs steps started at the data (CD-k) or from persistent chains
    that carry over between minibatches (PCD). Hidden probabilities stand in for hidden
    states in the statistics, which lowers their variance (Hinton 2010, section 3).

    Args:
        rbm: the machine to train.
        data: (S, n_visible) training states in [0, 1].
        epochs: passes over the data.
        batch_size: minibatch size (also the number of persistent chains).
        lr: learning rate.
        k: Gibbs steps per update.
        persistent: persistent CD instead of CD-k.
        momentum: momentum of the parameter updates.
        weight_decay: L2 penalty on the weights (not the biases).
        seed: seed of the minibatch order and of the Gibbs chains.

    Returns:
        The same ``rbm``, trained.

    """
    data = check_states(data, "data", rbm.n_visible)
    epochs, batch_size, k = (
        check_int(epochs, "epochs"),
        check_int(batch_size, "batch_size"),
        check_int(k, "k"),
    )
    lr = check_real(lr, "lr", minimum=0.0, exclusive=True)
    momentum = check_real(momentum, "momentum", minimum=0.0)
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0.0)
    persistent = check_bool(persistent, "persistent")
    generator = make_generator(_check_seed(seed))
    data = data.to(rbm.weight.dtype)
    params = (rbm.weight, rbm.hidden_bias, rbm.visible_bias)
    velocity = [torch.zeros_like(param) for param in params]
    chains = sample_bernoulli(data[:batch_size].clone(), generator) if persistent else None
    for _ in range(epochs):
        order = torch.randperm(data.shape[0], generator=generator)
        for start in range(0, data.shape[0], batch_size):
            v_data = data[order[start : start + batch_size]]
            h_data = rbm.hidden_probs(v_data)
            v_model, h_model = gibbs_model_statistics(
                rbm, chains if chains is not None else v_data, k, generator
            )
            if chains is not None:
                chains = v_model
            grads = likelihood_gradients(rbm, v_data, h_data, v_model, h_model, weight_decay)
            momentum_step(params, velocity, grads, lr=lr, momentum=momentum)
    return rbm


def fit_readout(
    rbm: RBM,
    hidden: Tensor,
    y: Tensor,
    *,
    epochs: int = 100,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
) -> RBM:
    """Fit a softmax label layer as a linear read-out of hidden states, in place.

    Multinomial logistic regression of ``y`` (labels, or probability targets) on ``hidden``
    (full-batch Adam): it sets
    ``W`` and ``a``, the label layer's classification conditional ``t_N(y | h)``. The
    visible bias ``b``, used only by the generation pass, is set to the log-odds of the
    mean hidden activity (Hinton 2010, section 8).
    """
    if rbm.hidden != "softmax":
        raise InvalidArgumentError("fit_readout needs a label layer (hidden='softmax')")
    hidden = check_states(hidden, "hidden", rbm.n_visible).to(rbm.weight.dtype)
    y = check_targets(y, n=hidden.shape[0], num_classes=rbm.n_hidden, device=hidden.device)
    optimiser = torch.optim.Adam([rbm.weight, rbm.hidden_bias], lr=lr, weight_decay=weight_decay)
    for _ in range(check_int(epochs, "epochs")):
        optimiser.zero_grad()
        target_cross_entropy(rbm.hidden_field(hidden).log_softmax(-1), y).backward()
        optimiser.step()
    with torch.no_grad():
        mean = hidden.mean(0).clamp(1e-3, 1 - 1e-3)
        rbm.visible_bias.copy_(torch.log(mean / (1 - mean)))
    return rbm


def greedy_pretrain(
    network: DeepRBM,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 50,
    batch_size: int = 32,
    lr: float = 0.1,
    k: int = 1,
    persistent: bool = False,
    seed: int = 0,
) -> DeepRBM:
    """Greedy layerwise training, in place: CD on each hidden layer, then a read-out.

    Layer ``k`` is trained on binary samples of ``h_{k-1}`` drawn by the (already
    trained) classification pass below it, so that each RBM sees the states the sampled
    pass will feed it.

    Args:
        network: the network to train.
        x: (S, ...) training inputs in [0, 1] (binarised for the intended use).
        y: (S,) class labels, or (S, C) probability targets for the read-out.
        epochs: CD epochs per layer (:func:`train_rbm`).
        batch_size: CD minibatch size.
        lr: CD learning rate.
        k: Gibbs steps per CD update.
        persistent: persistent CD instead of CD-k.
        seed: seed of every layer's training and of the upward samples.

    """
    inputs, labels = check_training_data(network, x, y)
    seed = _check_seed(seed) or 0
    generator = make_generator(seed + 1)
    state = inputs
    with torch.no_grad():
        for index, rbm in enumerate(network.rbms[:-1]):
            logger.info("CD on layer %d (%d -> %d units)", index + 1, rbm.n_visible, rbm.n_hidden)
            train_rbm(
                rbm,
                state,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                k=k,
                persistent=persistent,
                seed=seed + index,
            )
            state = rbm.sample_hidden(state, generator)
    fit_readout(network.rbms[-1], state, labels)
    return network


def fine_tune(
    network: DeepRBM,
    x: Tensor,
    y: Tensor,
    *,
    method: FineTuneMethod = "straight_through",
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 1e-2,
    chains: int = 8,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> DeepRBM:
    """Discriminative fine-tuning of the classification pass, in place.

    Only ``W_k`` and ``a_k`` change (the visible biases do not enter the classification
    pass), so the result is still a stack of RBMs with a generation pass.

    - ``"mean_field"``: minimise the cross-entropy of the mean-field pass by backpropagation.
    - ``"straight_through"``: minimise ``-log q̂_N(y | x)``, with ``q̂_N`` the average over
      ``chains`` sampled chains of the label layer's softmax; gradients pass through the
      binary samples with the straight-through estimator. This trains the stochastic
      pass that the network actually uses.

    Args:
        network: the network to train.
        x: (S, ...) training inputs.
        y: (S,) class labels, or (S, C) probability targets (soft cross-entropy).
        method: ``"straight_through"`` or ``"mean_field"``.
        epochs: passes over the data.
        batch_size: minibatch size.
        lr: Adam learning rate.
        chains: sampled chains per input (straight-through only).
        weight_decay: Adam weight decay.
        seed: seed of the minibatch order and of the chains.

    """
    method = check_choice(method, "method", ("mean_field", "straight_through"))  # type: ignore[assignment]
    inputs, labels = check_training_data(network, x, y)
    epochs, batch_size, chains = (
        check_int(epochs, "epochs"),
        check_int(batch_size, "batch_size"),
        check_int(chains, "chains"),
    )
    generator = make_generator(_check_seed(seed))
    params = [p for rbm in network.rbms for p in (rbm.weight, rbm.hidden_bias)]
    optimiser = torch.optim.Adam(
        params,
        lr=check_real(lr, "lr", minimum=0.0, exclusive=True),
        weight_decay=check_real(weight_decay, "weight_decay", minimum=0.0),
    )
    for _ in range(epochs):
        order = torch.randperm(inputs.shape[0], generator=generator)
        for start in range(0, inputs.shape[0], batch_size):
            batch = order[start : start + batch_size]
            if method == "mean_field":
                log_probs = network(inputs[batch])
            else:
                run = network.sample_up(
                    inputs[batch], chains=chains, generator=generator, straight_through=True
                )
                log_probs = run.end_probs.mean(1).clamp_min(1e-30).log()
            loss = target_cross_entropy(log_probs, labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return network
