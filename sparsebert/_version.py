"""The one place the version lives (pyproject.toml reads it; so does ``sparsebert --version``)."""

__version__ = "0.2.0"

# The torch releases this version is built and tested against: [first, end).
TORCH_RANGE = ((2, 6), (2, 14))
