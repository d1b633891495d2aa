"""Stacked denoising autoencoders against the definitions of Vincent et al. (2010)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binom
from torch import nn

from vulnscope.data import load_digits
from vulnscope.defences.sdae import (
    Reformer,
    StackedDenoisingAutoencoder,
    corrupt,
    denoising_loss,
    reconstruction_loss,
)
from vulnscope.defences.sdae_training import sdae_classifier, train_sdae
from vulnscope.errors import InvalidArgumentError


def test_masking_zeroes_a_binomial_share_and_leaves_the_rest():
    x = torch.rand(200, 500) + 0.5  # no entry is 0 before masking
    nu = 0.3
    noisy = corrupt(x, kind="masking", level=nu, generator=torch.Generator().manual_seed(0))
    masked = int((noisy == 0).sum())
    low, high = binom.ppf([1e-6, 1 - 1e-6], x.numel(), nu)
    assert low <= masked <= high
    kept = noisy != 0
    assert torch.equal(noisy[kept], x[kept])


def test_gaussian_noise_has_mean_zero_and_the_given_spread():
    x = torch.full((400, 500), 0.25, dtype=torch.float64)
    sigma = 0.7
    noise = corrupt(x, kind="gaussian", level=sigma, generator=torch.Generator().manual_seed(1)) - x
    n = noise.numel()
    assert abs(float(noise.mean())) < 5 * sigma / math.sqrt(n)
    # the sample variance's standard error is sigma^2 sqrt(2 / (n - 1))
    assert abs(float(noise.var()) - sigma**2) < 5 * sigma**2 * math.sqrt(2 / (n - 1))
    with pytest.raises(InvalidArgumentError, match=r"masking probability\) must be <= 1, got 1\.5"):
        corrupt(x, kind="masking", level=1.5, generator=torch.Generator())


def test_reconstruction_losses_match_the_paper_on_a_hand_case():
    x = torch.tensor([[1.0, 0.0, 0.5]])
    z = torch.tensor([[0.8, 0.1, 0.5]])
    # L_H(x, z) = -sum_k [x_k log z_k + (1 - x_k) log(1 - z_k)]
    by_hand = -(math.log(0.8) + math.log(0.9) + 0.5 * math.log(0.5) + 0.5 * math.log(0.5))
    assert reconstruction_loss(z, x, loss="cross-entropy").item() == pytest.approx(by_hand)
    assert reconstruction_loss(z, x, loss="squared").item() == pytest.approx(0.04 + 0.01)


@pytest.fixture(scope="module")
def digits():
    return load_digits("train")


def test_layerwise_training_reduces_each_layers_denoising_loss(digits):
    x = digits.x[:300]
    sizes = (64, 32, 16)

    def losses(sdae):
        with torch.no_grad():
            return [
                float(denoising_loss(sdae, x, layer=k, generator=torch.Generator().manual_seed(9)))
                for k in (0, 1, None)
            ]

    before = losses(StackedDenoisingAutoencoder(sizes=sizes, seed=3))
    after = losses(train_sdae(x, sizes=sizes, epochs=3, finetune_epochs=2, seed=3))
    assert all(a < 0.9 * b for a, b in zip(after, before, strict=True)), (before, after)


def test_relu_stack_scores_hidden_codes_by_squared_error():
    sdae = StackedDenoisingAutoencoder(sizes=(64, 16, 8), activation="relu")
    assert [sdae.layer_loss(k) for k in range(2)] == ["cross-entropy", "squared"]
    assert isinstance(sdae.decoder[0][1], nn.Identity)  # the top decoder is linear


def test_reformer_is_classifier_after_autoencoder_and_scripts(digits):
    sdae = StackedDenoisingAutoencoder(sizes=(64, 16), seed=0)
    classifier = sdae_classifier(sdae, digits.x[:64], digits.y[:64], epochs=1)
    reformer = Reformer(classifier, sdae).eval()
    x = digits.x[:5]
    assert torch.equal(reformer(x), classifier(sdae(x)))
    assert torch.equal(torch.jit.script(reformer)(x), reformer(x))
    # the classifier starts from a copy of the encoder: the stack is left untouched
    assert not any(p is q for p in classifier.parameters() for q in sdae.parameters())
