"""Command line: ``sparsebert info``."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch

import sparsebert
from sparsebert import _extension

# Ops in the ``sparsebert`` namespace, and the dispatch keys an implementation is looked up for.
_DISPATCH_KEYS = ("CPU", "CUDA")


def _kernels() -> list[tuple[str, list[str]]]:
    rows = []
    for name in torch.ops.sparsebert:
        packet = getattr(torch.ops.sparsebert, name)
        keys = [k for k in _DISPATCH_KEYS if torch._C._dispatch_has_kernel_for_dispatch_key(packet.default.name(), k)]
        rows.append((name, keys))
    return sorted(rows)


def info(_args) -> int:
    try:
        active = _extension.active_isa()
    except ValueError as e:
        active = f"invalid ({e})"
    triton = importlib.util.find_spec("triton") is not None
    print(f"sparsebert   {sparsebert.__version__}")
    print(f"torch        {torch.__version__}")
    print(f"cpu isa      detected={_extension.detected_isa()} active={active}")
    print(f"threads      {torch.get_num_threads()} (torch.get_num_threads)")
    print("backends     cpu: C++ extension loaded; reference: pure torch; "
          f"cuda: {'available' if torch.cuda.is_available() else 'no CUDA device'}, "
          f"triton {'installed' if triton else 'not installed'}")
    print("kernels")
    for name, keys in _kernels():
        print(f"  sparsebert::{name:<16} {', '.join(keys) if keys else '(no device implementation)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsebert", description=sparsebert.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, CPU ISA, backends, kernels, threads").set_defaults(func=info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
