"""The cached deep RBM trains on one intra-op thread, whatever the caller set."""

from __future__ import annotations

import torch

from vulnscope.rbm import pretrained


def test_the_deep_rbm_recipe_trains_on_one_thread_and_gives_the_callers_count_back(
    monkeypatch, isolated_cache
):
    """Unpinned, the default width's weights differ by 0.15 between 1 and 2 threads.

    That full training takes minutes on two threads, so this checks where the pinning
    happens: both training phases run on one thread, and the caller's count comes back.
    """
    seen = []

    def recording(phase):
        def train(network, *arguments, **options):
            seen.append((phase, torch.get_num_threads()))
            return network

        return train

    monkeypatch.setattr(pretrained, "greedy_pretrain", recording("pretrain"))
    monkeypatch.setattr(pretrained, "fine_tune", recording("fine_tune"))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pretrained.pretrained_deep_rbm(depth=2, width=4, use_cache=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert seen == [("pretrain", 1), ("fine_tune", 1)]


def test_networks_cached_before_the_pinning_are_not_reused():
    assert pretrained.DeepRBMRecipe().revision == 2
    key = pretrained.DeepRBMRecipe().key(4, 64, 0)
    assert key != pretrained.DeepRBMRecipe(revision=1).key(4, 64, 0)
