"""The spatial searches: exact enumeration, a translation-invariant model, state, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.errors import InvalidArgumentError
from vulnscope.perturbations.spatial import (
    spatial_first_order,
    spatial_worst_case,
    worst_of_k,
)
from vulnscope.perturbations.transforms import (
    affine_transform,
    default_spatial_grid,
    transformation_grid,
)


def _tiny_cnn(seed: int = 0, padding_mode: str = "zeros") -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode=padding_mode),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode=padding_mode),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def _data(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=generator)
    return x, torch.randint(0, 3, (n,), generator=generator)


def test_grid_search_equals_one_transformation_at_a_time() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x, _ = _data()
    y = model(x).argmax(1)
    rotations, translations = [-10.0, 0.0, 10.0], [-0.5, 0.25]
    result = spatial_worst_case(
        model, x, y, rotations=rotations, translations=translations, fill=0.2, batch_size=5
    )
    grid = transformation_grid(rotations, translations)
    with torch.no_grad():
        logits = torch.stack(
            [model(affine_transform(x, row.float().expand(len(x), 4), fill=0.2)) for row in grid],
            dim=1,
        )
    correct = logits.argmax(2) == y[:, None]
    others = logits.scatter(2, y[:, None, None].expand(-1, len(grid), 1), -torch.inf)
    margins = logits.gather(2, y[:, None, None].expand(-1, len(grid), 1))[..., 0] - others.amax(2)
    assert torch.equal(result.robust, correct.all(1))
    assert 0 < float(correct.float().mean()) < 1
    fast = spatial_worst_case(
        model,
        x,
        y,
        rotations=rotations,
        translations=translations,
        fill=0.2,
        batch_size=4,
        grid_accuracy=False,
    )
    assert torch.equal(fast.robust, result.robust) and fast.grid_accuracy is None
    assert torch.allclose(result.grid_accuracy, correct.float().mean(0))
    for i in range(len(x)):
        wrong = ~correct[i]
        expected = margins[i].masked_fill(~wrong, torch.inf) if wrong.any() else margins[i]
        assert torch.allclose(result.worst_params[i], grid[int(expected.argmin())].float())
    assert torch.allclose(
        result.x_worst, affine_transform(x, result.worst_params, fill=0.2), atol=1e-6
    )


def test_early_stopping_keeps_the_robust_points_and_classifies_fewer_images() -> None:
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = linear(x).argmax(1)
    rotations, translations = [-10.0, 0.0, 10.0], [-0.5, 0.0, 0.5]
    grid = transformation_grid(rotations, translations)
    with torch.no_grad():
        correct = torch.stack(
            [
                linear(affine_transform(x, row.float().expand(len(x), 4))).argmax(1) == y
                for row in grid
            ],
            dim=1,
        )
    classified: list[int] = []

    def model(images: torch.Tensor) -> torch.Tensor:
        classified.append(len(images))
        return linear(images)

    results = {}
    for every in (True, False):
        classified.clear()
        result = spatial_worst_case(
            model,
            x,
            y,
            rotations=rotations,
            translations=translations,
            batch_size=24,  # two transformations per point in the first early-stopping call
            grid_accuracy=every,
        )
        results[every] = result, sum(classified)
    (full, full_images), (fast, fast_images) = results[True], results[False]
    robust = correct.all(1)
    assert torch.equal(fast.robust, robust) and 0 < int(robust.sum()) < len(x)
    assert full_images == len(x) * (1 + len(grid)) and fast_images < full_images
    # A fooled point's worst fools it; a robust point's is the full search's, lowest margin.
    row = (fast.worst_params[:, None] == grid.float()).all(2).float().argmax(1)
    assert torch.equal(correct[torch.arange(len(x)), row], robust)
    assert torch.equal(fast.worst_params[robust], full.worst_params[robust])
    assert torch.allclose(fast.x_worst, affine_transform(x, fast.worst_params), atol=1e-6)


def test_circular_translation_invariant_model_is_robust_to_every_circular_translation() -> None:
    # Circular convolutions commute with circular shifts; global average pooling removes them.
    model = _tiny_cnn(2, padding_mode="circular")
    x, _ = _data(8, seed=3)
    y = model(x).argmax(1)
    shifts = [float(t) for t in range(-7, 8)]
    result = spatial_worst_case(model, x, y, rotations=[0.0], translations=shifts, fill="circular")
    assert bool(result.robust.all()) and bool((result.grid_accuracy == 1).all())
    logits = model(x)
    clean_margin = logits.gather(1, y[:, None])[:, 0] - logits.scatter(1, y[:, None], -1e9).amax(1)
    assert torch.allclose(result.worst_margin, clean_margin, atol=1e-5)
    # The same model is not invariant to translations that lose content.
    lossy = spatial_worst_case(model, x, y, rotations=[0.0], translations=shifts[4:11])
    assert bool((lossy.worst_margin < clean_margin - 1e-3).any())


def test_random_and_first_order_searches() -> None:
    model = _tiny_cnn(3)
    x, _ = _data(10, seed=1)
    y = model(x).argmax(1)
    kwargs = {"rotation": 30.0, "translation": 1.0}
    first = worst_of_k(model, x, y, k=6, seed=5, **kwargs)
    again = worst_of_k(model, x, y, k=6, seed=5, batch_size=7, **kwargs)
    assert torch.equal(first.worst_params, again.worst_params)
    assert first.grid is None and first.grid_accuracy is None
    params = first.worst_params
    assert bool((params[:, 0].abs() <= 30).all() and (params[:, 1:3].abs() <= 1).all())
    assert bool((params[:, 3] == 1).all())
    pgd = spatial_first_order(model, x, y, steps=5, restarts=2, seed=0, **kwargs)
    assert bool((pgd.worst_params[:, 0].abs() <= 30).all())
    # More steps keep every earlier iterate, so never find fewer misclassified points.
    longer = spatial_first_order(model, x, y, steps=0, restarts=2, seed=0, **kwargs)
    assert bool((pgd.robust <= longer.robust).all())
    logits = model(pgd.x_worst)
    assert torch.equal(logits.argmax(1) == y, pgd.worst_margin > 0)


def test_model_state_is_kept_and_no_gradient_leaks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3))
    model.train()
    before = [b.clone() for b in model.buffers()]
    x, y = _data(4)
    with pytest.warns(UserWarning):
        spatial_first_order(model, x, y, rotation=10.0, translation=1.0, steps=2, seed=0)
    with pytest.warns(UserWarning):
        spatial_worst_case(model, x, y, rotations=[0.0, 5.0], translations=[0.0])
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rotations": [], "translations": [0.0]}, "rotations must hold at least one"),
        ({"rotations": [0.0], "translations": []}, "translations must hold at least one"),
        ({"rotations": [0.0], "translations": [8.0]}, "smaller than the image"),
        ({"rotations": [0.0], "translations": [0.0], "batch_size": 0}, "batch_size must"),
        ({"rotations": [0.0], "translations": [0.0], "fill": "edge"}, "fill must"),
    ],
)
def test_bad_grid(kwargs, match) -> None:
    x, y = _data(2)
    with pytest.raises(InvalidArgumentError, match=match):
        spatial_worst_case(_tiny_cnn(), x, y, **kwargs)


def test_bad_ranges_and_inputs() -> None:
    model, (x, y) = _tiny_cnn(), _data(2)
    with pytest.raises(InvalidArgumentError, match="translation must be smaller than the image"):
        worst_of_k(model, x, y, k=2, rotation=0.0, translation=9.0, seed=0)
    with pytest.raises(InvalidArgumentError, match="k must be an integer >= 1"):
        worst_of_k(model, x, y, k=0, rotation=0.0, translation=1.0, seed=0)
    with pytest.raises(InvalidArgumentError, match=r"scale must satisfy low <= high"):
        spatial_first_order(model, x, y, rotation=1.0, translation=1.0, scale=(1.2, 0.8), seed=0)
    with pytest.raises(InvalidArgumentError, match=r"inputs must be .* \(N, C, H, W\)"):
        spatial_worst_case(model, x[:, 0], y, rotations=[0.0], translations=[0.0])
    with pytest.raises(InvalidArgumentError, match="labels must have shape"):
        spatial_worst_case(model, x, y[:1], rotations=[0.0], translations=[0.0])
    with pytest.raises(InvalidArgumentError, match="labels must hold class indices < 3"):
        spatial_worst_case(model, x, y + 3, rotations=[0.0], translations=[0.0])


def test_the_defaults_are_engstrom_s_ranges_scaled_to_the_image() -> None:
    model = _tiny_cnn(2)
    x, y = _data(4, seed=2)
    grid = default_spatial_grid(x.shape)  # 8x8: ±30° in 9 steps, ±1 px in 3
    assert max(grid.rotations) == 30.0 and max(grid.translations) == 1.0
    assert torch.equal(spatial_worst_case(model, x, y).grid, grid.params().to(x.dtype))
    assert torch.equal(
        worst_of_k(model, x, y, k=5, seed=1).worst_params,
        worst_of_k(model, x, y, k=5, seed=1, rotation=30.0, translation=1.0).worst_params,
    )
    big = torch.rand(2, 1, 28, 28)
    assert max(default_spatial_grid(big.shape).translations) == 3.0  # Engstrom's ±3 px
