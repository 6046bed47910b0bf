"""Triton kernels for CUDA, shipped as ``sparsebert.kernels``.

No GPU kernel is implemented in this version: the CUDA dispatch key of every sparsebert op has
no implementation, so calling an op on CUDA tensors raises the dispatcher's NotImplementedError.
"""

__all__: list[str] = []
