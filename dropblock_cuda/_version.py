"""The package version, in one place: read by pyproject.toml (setuptools) and by __init__."""

__version__ = "0.2.0"
