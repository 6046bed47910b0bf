import pytest
import torch

from sparsebert.prune import block_magnitude_mask


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.95, 1.0])
def test_keeps_the_largest_blocks(sparsity):
    w = torch.randn(64, 96)
    mask = block_magnitude_mask(w, sparsity, (16, 32))
    assert mask.shape == w.shape and mask.dtype == torch.bool
    blocks = mask.reshape(4, 16, 3, 32).permute(0, 2, 1, 3).flatten(2)  # (4, 3, 512)
    assert (blocks.all(-1) | ~blocks.any(-1)).all()  # whole blocks only
    kept = blocks.any(-1).flatten()
    assert kept.sum() == 12 - round(sparsity * 12)
    norms = w.reshape(4, 16, 3, 32).permute(0, 2, 1, 3).flatten(2).norm(dim=-1).flatten()
    if 0 < kept.sum() < 12:
        assert norms[kept].min() >= norms[~kept].max()


def test_partial_edge_blocks():
    w = torch.ones(20, 10)
    w[16:, :] = 100.0  # the partial block row (4 real rows) has the largest norm
    mask = block_magnitude_mask(w, 0.5, (16, 8))  # 2 x 2 blocks, keep 2
    assert mask[16:].all() and not mask[:16].any()


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, "0.5", None, True])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity must be a number in \\[0, 1\\]"):
        block_magnitude_mask(torch.randn(4, 4), sparsity, (2, 2))


def test_bad_weight():
    with pytest.raises(ValueError, match="weight must be 2-D"):
        block_magnitude_mask(torch.randn(4), 0.5, (2, 2))
