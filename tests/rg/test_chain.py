"""The pieces both RG analyses share: spectra of a chain, active operators, embedding."""

from __future__ import annotations

import torch

from vulnscope.cloning import GenerationRG
from vulnscope.rg import InputRG
from vulnscope.rg.chain import ChainRG, active_operators, chain_spectra, embed
from vulnscope.rg.mcrg import StabilityMatrix
from vulnscope.rg.operators import OperatorSet


def _matrix(t: torch.Tensor, replicas: torch.Tensor | None = None) -> StabilityMatrix:
    eye = torch.eye(t.shape[0], dtype=t.dtype)
    stderr = None if replicas is None else replicas.std(0)
    return StabilityMatrix(t, stderr, 1.0, 100, eye, replicas, None)


def test_both_passes_share_one_result_type():
    assert issubclass(InputRG, ChainRG)
    assert issubclass(GenerationRG, ChainRG)


def test_chain_spectra_reads_eigenvalues_of_square_layers_and_singular_values_of_the_last():
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    square = torch.diag(torch.tensor([3.0, 0.5], dtype=torch.float64)) @ rotation
    last = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # singular value 5
    spectra = chain_spectra([_matrix(square), _matrix(last)])
    eigenvalues = torch.linalg.eigvals(square).abs().max()
    torch.testing.assert_close(
        spectra.leading, torch.stack([eigenvalues, torch.tensor(5.0)]).double()
    )
    torch.testing.assert_close(spectra.singular, torch.tensor([3.0, 5.0], dtype=torch.float64))
    # |λ| = sqrt(1.5) for both eigenvalues of this matrix: both above one, both relevant.
    assert spectra.relevant.tolist() == [2]
    assert spectra.leading_stderr.tolist() == [0.0, 0.0]


def test_chain_spectra_counts_only_eigenvalues_beyond_one_error():
    t = torch.diag(torch.tensor([1.05, 2.0], dtype=torch.float64))
    replicas = torch.stack([t * 0.8, t * 1.2, t])  # jackknife error 0.2 |λ| · sqrt(4/3)
    spectra = chain_spectra([_matrix(t, replicas), _matrix(torch.ones(1, 2, dtype=torch.float64))])
    assert spectra.relevant.tolist() == [1]
    assert float(spectra.leading_stderr[0]) > 0


def test_active_operators_drops_frozen_units_and_dependent_products():
    generator = torch.Generator().manual_seed(0)
    states = (torch.rand(400, 3, generator=generator) > 0.5).double()
    states[:, 2] = 1.0  # unit 2 never flips: frozen
    states[:, 1] = states[:, 0]  # unit 1 copies unit 0: s0 s1 is constant, s1 duplicates s0
    operators = OperatorSet.complete(3)
    values = operators(states)
    active = active_operators(values, operators, states, minimum=10)
    kept = [operators.subsets[i] for i in active.nonzero().flatten().tolist()]
    assert kept == [(0,)]


def test_embed_places_the_active_block_and_zeros_elsewhere():
    block = _matrix(torch.tensor([[2.0]], dtype=torch.float64))
    rows = torch.tensor([False, True])
    cols = torch.tensor([True, False, False])
    full = embed(block, rows, cols)
    assert full.T.tolist() == [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    assert full.coarse_covariance.tolist() == [[0.0, 0.0], [0.0, 1.0]]
