"""Comparative benchmark of dropblock_cuda (``python -m benchmarks --help``)."""
