"""geogen: probabilistic precipitation nowcasting and downscaling with deep generative models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geogen")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"
