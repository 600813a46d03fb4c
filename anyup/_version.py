"""The package version: the one place it is written (pyproject.toml reads it via setuptools' `attr:`)."""

__version__ = "0.1.0"
