"""Autograd for ops that have no derivative: backward raises instead of torch's default, which
(with a warning) treats the op as constant and returns wrong gradients for its inputs."""

from __future__ import annotations

import torch


def register_inference_only(op: str) -> None:
    """Makes ``loss.backward()`` through ``sparsebert::<op>`` raise a RuntimeError naming it."""

    def backward(ctx, *grads):
        raise RuntimeError(
            f"sparsebert::{op} is inference-only: it has no backward. Run it under torch.no_grad() or "
            "torch.inference_mode(), or train with the dense layer"
        )

    torch.library.register_autograd(f"sparsebert::{op}", backward, setup_context=lambda ctx, inputs, output: None)
