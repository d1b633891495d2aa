"""stAdv: the flow loss by hand, the resampling by indexing, and digits it breaks."""

from __future__ import annotations

import math

import pytest
import torch

from vulnscope.attacks import StAdv
from vulnscope.attacks.stadv import apply_flow, flow_loss


def test_flow_loss_equals_the_hand_computed_total_variation():
    # 2x2 flow, zero but at the top-left pixel, displaced by (3, 4): its two neighbours
    # differ from it by 5, and each of those pairs counts twice (as p and as q); the two
    # other adjacent pairs differ by 0. 8 ordered pairs in all.
    flow = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    flow[0, :, 0, 0] = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert flow_loss(flow, smoothing=0.0).item() == pytest.approx(20.0)
    eps = 1e-2
    expected = 4 * math.sqrt(25 + eps) + 4 * math.sqrt(eps)
    assert flow_loss(flow, smoothing=eps).item() == pytest.approx(expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(2, 3), (8, 8), (7, 13)])
def test_zero_flow_is_the_identity_exactly(dtype, size):
    x = torch.rand(3, 2, *size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert torch.equal(apply_flow(x, torch.zeros(3, 2, *size, dtype=dtype)), x)


def test_an_integer_flow_reads_the_shifted_pixels_with_the_border_repeated():
    x = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    flow = torch.zeros(2, 2, 5, 6, dtype=torch.float64)
    flow[:, 0] = 1.0  # each pixel reads the one below it
    flow[:, 1] = -2.0  # and two to its left
    rows = (torch.arange(5) + 1).clamp(max=4)
    cols = (torch.arange(6) - 2).clamp(min=0)
    expected = x[:, :, rows][:, :, :, cols]
    torch.testing.assert_close(apply_flow(x, flow), expected, rtol=0.0, atol=1e-12)


def test_a_half_pixel_flow_averages_the_neighbours():
    x = torch.arange(4, dtype=torch.float64).view(1, 1, 1, 4)
    flow = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    flow[:, 1] = 0.5
    torch.testing.assert_close(
        apply_flow(x, flow)[0, 0, 0], torch.tensor([0.5, 1.5, 2.5, 3.0], dtype=torch.float64)
    )


def test_it_breaks_most_digits_with_sub_pixel_smooth_flows(digits_cnn, digits_test):
    x, y = digits_test.x[:20], digits_test.y[:20]
    attack = StAdv(steps=50, step_size=0.05)
    found = attack.flow_field(digits_cnn, x, y)
    assert found.success.float().mean() >= 0.8
    moved = found.success
    # Sub-pixel: the median sample moves no pixel by a whole pixel, and neighbouring
    # displacements differ by a tenth of a pixel or so (224 ordered pairs on 8x8).
    assert found.flow[moved].abs().amax(dim=(1, 2, 3)).median() < 1.0
    assert found.flow_loss[moved].median() / 224 < 0.25
    # The attack returns exactly the moved images (no cap), scored by the model.
    result = attack(digits_cnn, x, y)
    assert torch.equal(result.x_adv, found.x_adv)
    assert torch.equal(result.success, found.success)


def test_non_images_are_refused():
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"x must be images of shape \(N, C, H, W\)"):
        StAdv(steps=2)(model, torch.rand(2, 4), torch.tensor([0, 1]))
