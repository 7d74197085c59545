"""The one place the version string lives (read by pyproject and the package)."""

__version__ = "0.1.0"
