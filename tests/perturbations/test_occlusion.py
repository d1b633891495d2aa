"""occlusion_worst_case against a brute-force double loop over patch positions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.perturbations.occlusion import occlusion_worst_case


def _tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 5, 4)
    ).eval()


def _brute_force(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    patch: tuple[int, int],
    stride: tuple[int, int],
    fill: str | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per point, one occluded image at a time: drop map, robust, worst (row, col), x_worst."""
    height, width = x.shape[2:]
    rows = range(0, height - patch[0] + 1, stride[0])
    cols = range(0, width - patch[1] + 1, stride[1])
    drops, robust, worst, x_worst = [], [], [], []
    with torch.no_grad():
        for image, label in zip(x, y, strict=True):
            clean = model(image[None])[0]
            ok = bool(clean.argmax() == label)
            p_clean = clean.softmax(0)[label]
            drop = torch.empty(len(rows), len(cols))
            best = (float("inf"), (0, 0), image)
            for i, r in enumerate(rows):
                for j, c in enumerate(cols):
                    occluded = image.clone()
                    value = image.mean(dim=(1, 2))[:, None, None] if fill == "mean" else fill
                    occluded[:, r : r + patch[0], c : c + patch[1]] = value
                    logits = model(occluded[None])[0]
                    drop[i, j] = p_clean - logits.softmax(0)[label]
                    ok = ok and bool(logits.argmax() == label)
                    others = torch.cat([logits[:label], logits[label + 1 :]])
                    margin = float(logits[label] - others.max())
                    if margin < best[0]:
                        best = (margin, (r, c), occluded)
            drops.append(drop)
            robust.append(ok)
            worst.append(best[1])
            x_worst.append(best[2])
    return torch.stack(drops), torch.tensor(robust), torch.tensor(worst), torch.stack(x_worst)


@pytest.mark.parametrize(
    ("patch", "stride", "fill", "batch_size"),
    [(2, 1, 0.0, None), ((3, 2), (2, 1), "mean", 7), ((1, 5), 2, 1.0, 1)],
)
def test_matches_a_brute_force_double_loop(
    patch: int | tuple[int, int],
    stride: int | tuple[int, int],
    fill: str | float,
    batch_size: int | None,
) -> None:
    model = _tiny_cnn()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(5, 2, 6, 5, generator=generator)
    y = torch.randint(0, 4, (5,), generator=generator)
    result = occlusion_worst_case(
        model, x, y, patch=patch, stride=stride, fill=fill, batch_size=batch_size
    )
    pair = (patch, patch) if isinstance(patch, int) else patch
    steps = (stride, stride) if isinstance(stride, int) else stride
    drops, robust, worst, x_worst = _brute_force(model, x, y, pair, steps, fill)
    torch.testing.assert_close(result.drop_map, drops, atol=1e-6, rtol=0)
    assert torch.equal(result.robust, robust)
    assert torch.equal(result.worst_position, worst)
    torch.testing.assert_close(result.x_worst, x_worst)
    assert result.accuracy == pytest.approx(float(robust.float().mean()))
    assert torch.equal(result.clean_correct, model(x).argmax(1) == y)


def test_a_patch_over_the_only_evidence_breaks_the_point() -> None:
    # the class is read from pixel (2, 3) alone: only patches covering it change the class
    linear = nn.Linear(16, 2)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[0, 2 * 4 + 3] = 1.0
        linear.bias.copy_(torch.tensor([0.0, 0.5]))
    model = nn.Sequential(nn.Flatten(), linear)
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 2, 3] = 1.0
    result = occlusion_worst_case(model, x, torch.tensor([0]), patch=2, stride=1)
    assert not bool(result.robust[0])
    covering = torch.zeros(3, 3, dtype=torch.bool)
    covering[1:3, 2] = True
    assert torch.equal(result.drop_map[0] > 0, covering)
    assert tuple(result.worst_position[0].tolist()) in {(1, 2), (2, 2)}
    assert float(result.x_worst[0, 0, 2, 3]) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "shape", "error", "match"),
    [
        ({"patch": 7, "stride": 1}, (2, 1, 6, 6), InvalidArgumentError, "patch must fit"),
        ({"patch": (2, 7), "stride": 1}, (2, 1, 6, 6), InvalidArgumentError, "patch must fit"),
        ({"patch": 2, "stride": 0}, (2, 1, 6, 6), InvalidArgumentError, "stride must be"),
        ({"patch": 2, "stride": (1, 0)}, (2, 1, 6, 6), InvalidArgumentError, r"stride\[1\]"),
        ({"patch": 2.5, "stride": 1}, (2, 1, 6, 6), InvalidTypeError, "patch must be an integer"),
        ({"patch": 2, "stride": 1, "fill": "max"}, (2, 1, 6, 6), InvalidArgumentError, "fill"),
        ({"patch": 2, "stride": 1}, (2, 36), InvalidArgumentError, r"\(N, C, H, W\)"),
    ],
)
def test_bad_arguments_raise_one_clear_error(
    kwargs: dict[str, object], shape: tuple[int, ...], error: type[Exception], match: str
) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    with pytest.raises(error, match=match):
        occlusion_worst_case(model, torch.rand(shape), torch.tensor([0, 1]), **kwargs)  # type: ignore[arg-type]
