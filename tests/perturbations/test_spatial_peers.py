"""The spatial grid search against Foolbox's SpatialAttack and ART's SpatialTransformation.

Foolbox samples with ``align_corners=True`` and divides its translation by ``n / 2``, so
its "pixel" is ``(n - 1) / n`` of one; it also samples the input at ``R u + t`` (translate,
then rotate, in our content terms), where Engstrom et al. and we rotate then translate.
Its transformation ``(φ, t)`` is therefore ours ``(φ, -R(φ)ᵀ t (n - 1) / n)``: on the
same set of transformations the robust points agree one for one.

ART's attack is universal (the one transformation that fools most points) and resamples
with scipy's cubic splines, which agree with bilinear sampling only at whole pixels: it is
compared on integer translations, where both shift the image exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vulnscope.perturbations.spatial import spatial_worst_case, worst_over_transformations
from vulnscope.perturbations.transforms import affine_transform

foolbox = pytest.importorskip("foolbox")


def _foolbox_row(phi: float, tx: float, ty: float, n: int) -> list[float]:
    c, s = math.cos(math.radians(phi)), math.sin(math.radians(phi))
    a, b = tx * (n - 1) / n, ty * (n - 1) / n
    return [phi, -(c * a + s * b), -(-s * a + c * b), 1.0]


def test_transformed_images_equal_foolbox() -> None:
    import eagerpy as ep
    from foolbox.attacks.spatial_attack_transformations import rotate_and_shift

    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for phi, tx, ty in [(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (20.0, 0.0, 0.0), (-25.0, 0.7, -1.3)]:
        theirs = rotate_and_shift(ep.astensor(x), translation=(tx, ty), rotation=phi).raw
        ours = affine_transform(x, torch.tensor([_foolbox_row(phi, tx, ty, 8)]).expand(3, 4))
        assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_grid_search_equals_foolbox_spatial_attack(digits_cnn, digits_test) -> None:
    x, y = digits_test.x[:50], digits_test.y[:50]
    n, max_rotation, max_translation = 8, 10.0, 0.5 * 8 / 7
    attack = foolbox.attacks.SpatialAttack(
        max_translation=max_translation,
        max_rotation=max_rotation,
        num_translations=3,
        num_rotations=5,
    )
    model = foolbox.PyTorchModel(digits_cnn, bounds=(0.0, 1.0))
    _, _, success = attack(model, x, foolbox.criteria.Misclassification(y))
    rotations = np.linspace(-max_rotation, max_rotation, 5)
    shifts = np.linspace(-max_translation, max_translation, 3)
    grid = torch.tensor(
        [_foolbox_row(p, a, b, n) for p in rotations for a in shifts for b in shifts]
    )
    ours = worst_over_transformations(digits_cnn, x, y, grid)
    assert 0 < ours.accuracy < 1
    assert torch.equal(ours.robust, ~success)
    # Pure translations: both conventions give the same set of transformations.
    translated = spatial_worst_case(
        digits_cnn, x, y, rotations=[0.0], translations=(shifts * (n - 1) / n).tolist()
    )
    attack = foolbox.attacks.SpatialAttack(
        max_translation=max_translation, max_rotation=0.0, num_translations=3, num_rotations=1
    )
    _, _, success = attack(model, x, foolbox.criteria.Misclassification(y))
    assert torch.equal(translated.robust, ~success)


def test_most_harmful_translation_equals_art(digits_cnn, digits_test) -> None:
    pytest.importorskip("art")
    from art.attacks.evasion import SpatialTransformation
    from art.estimators.classification import PyTorchClassifier

    x = digits_test.x[:20]
    with torch.no_grad():
        predicted = digits_cnn(x).argmax(1)
    classifier = PyTorchClassifier(
        digits_cnn,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    # 25% of 8 px: translations -2, -1, 0, 1, 2 px, no rotation. With channels first ART
    # takes the vertical range from x.shape[1] (the channel count: 25% of 1 px rounds to
    # 0), so it shifts the columns only: our dx.
    attack = SpatialTransformation(
        classifier, max_translation=25.0, num_translations=5, max_rotation=0.0, num_rotations=1
    )
    attack.generate(x.numpy())
    grid = torch.tensor([[0.0, float(dx), 0.0, 1.0] for dx in range(-2, 3)])
    ours = worst_over_transformations(digits_cnn, x, predicted, grid)
    assert ours.grid_accuracy is not None
    assert 1 - float(ours.grid_accuracy.min()) == pytest.approx(attack.fooling_rate, abs=1e-6)
    assert 0 < attack.fooling_rate < 1
