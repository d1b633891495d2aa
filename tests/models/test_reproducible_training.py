"""The embedded reference models train to the same weights at any thread count."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vulnscope._threads import fixed_threads
from vulnscope.data.digits import load_digits
from vulnscope.models.cache import PRETRAINED, train_recipe


def _trained(name: str, threads: int, epochs: int) -> dict[str, torch.Tensor]:
    factory, recipe = PRETRAINED[name]
    train = load_digits("train")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = train_recipe(
            factory, dataclasses.replace(recipe, epochs=epochs), train.x, train.y, seed=0
        )
        assert torch.get_num_threads() == threads  # the caller's setting is given back
    finally:
        torch.set_num_threads(previous)
    return model.state_dict()


@pytest.mark.parametrize(("name", "epochs"), [("digits-cnn", 2), ("digits-mlp", 2)])
def test_the_reference_recipe_gives_bit_identical_weights_on_1_and_2_threads(name, epochs):
    """The default model's recipe, shortened to two epochs: the same code path, 15x cheaper.

    Unpinned, two epochs on two threads already differ from one thread in the last bits
    (the convolutions' and matrix products' sums are split among the threads).
    """
    one, two = _trained(name, 1, epochs), _trained(name, 2, epochs)
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key


def test_fixed_threads_restores_the_previous_count_even_on_error():
    previous = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"), fixed_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == previous
