"""geogen: probabilistic precipitation nowcasting and downscaling with deep generative models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geogen")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"


def __getattr__(name: str):  # lazy: `import geogen` stays light (no torch, no pysteps)
    if name == "forecast":
        from geogen.forecasting import forecast

        return forecast
    if name == "downscale":
        from geogen.downscaling import downscale

        return downscale
    if name == "score":
        from geogen.verification.api import score

        return score
    if name == "open_source":
        from geogen.io import open_source

        return open_source
    raise AttributeError(f"module 'geogen' has no attribute {name!r}")
