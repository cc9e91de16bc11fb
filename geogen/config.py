"""Config plumbing shared by the Hydra entry points.

Where ``conf/`` is, OmegaConf resolvers, loading a shipped source config from Python, and
finding the sample data.

Data location (``paths.radar_root``), first that exists:

1. ``$GEOGEN_DATA`` (a folder laid out like pysteps-data: ``radar/mch/...``);
2. ``../shared/data/pysteps-data`` beside the repository (or the current directory);
3. the folder of pysteps' example data as configured in the user's ``pystepsrc`` (after
   ``pysteps.datasets.download_pysteps_data`` + ``create_default_pystepsrc``);
4. ``~/.cache/geogen/pysteps-data`` (where ``scripts/demo.sh`` downloads it when asked).

Climate fields (``paths.climate_root``): ``$GEOGEN_CLIMATE_DATA``, else ``../shared/data/era5``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
#: Repository root when running from a checkout or an editable install.
REPO_ROOT = PACKAGE_DIR.parent
DOWNLOAD_DIR = (
    Path(os.environ.get("GEOGEN_CACHE", Path.home() / ".cache" / "geogen")) / "pysteps-data"
)

NO_DATA_HELP = (
    "no radar data found. Point geogen at data in pysteps' layout with one of:\n"
    "  export GEOGEN_DATA=/path/to/pysteps-data     (folder holding radar/mch, radar/fmi, ...)\n"
    "  geogen-prepare source=mch source.root=/path/to/radar/mch ...\n"
    f"  python -c 'import pysteps; pysteps.datasets.download_pysteps_data(\"{DOWNLOAD_DIR}\")'  "
    "(needs internet)"
)


def config_dir() -> Path:
    """The ``conf/`` folder (top-level in a checkout, ``geogen/conf`` inside a wheel)."""
    for candidate in (REPO_ROOT / "conf", PACKAGE_DIR / "conf"):
        if (candidate / "prepare.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"geogen's configs are missing (looked in {REPO_ROOT / 'conf'})")


def _shared_data_candidates(sub: str) -> list[Path]:
    return [REPO_ROOT.parent / "shared" / "data" / sub, Path.cwd().parent / "shared" / "data" / sub]


def _pystepsrc_data_root() -> Path | None:
    """The pysteps-data root from the user's pystepsrc, if it points at existing data."""
    try:
        from geogen.pysteps_import import import_pysteps

        sources = import_pysteps().rcparams.data_sources
        root = Path(str(sources["mch"]["root_path"])).expanduser()
    except Exception:  # pysteps missing or no data_sources: nothing to find
        return None
    if root.is_absolute() and root.is_dir():
        return root.parent.parent  # .../pysteps-data/radar/mch -> .../pysteps-data
    return None


def find_radar_data() -> Path | None:
    """The first existing radar data root (see module docstring), or ``None``."""
    candidates: list[Path | None] = []
    if os.environ.get("GEOGEN_DATA"):
        candidates.append(Path(os.environ["GEOGEN_DATA"]).expanduser())
    candidates += _shared_data_candidates("pysteps-data")
    candidates.append(_pystepsrc_data_root())
    candidates.append(DOWNLOAD_DIR)
    for path in candidates:
        if path is not None and (path / "radar").is_dir():
            return path.resolve()
    if os.environ.get("GEOGEN_DATA"):
        log.warning("GEOGEN_DATA=%s has no radar/ folder", os.environ["GEOGEN_DATA"])
    return None


def find_climate_data() -> Path | None:
    """The first existing climate data folder, or ``None``."""
    candidates = []
    if os.environ.get("GEOGEN_CLIMATE_DATA"):
        candidates.append(Path(os.environ["GEOGEN_CLIMATE_DATA"]).expanduser())
    candidates += _shared_data_candidates("era5")
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    return None


def _data_resolver(kind: str) -> str:
    found = find_radar_data() if kind == "radar" else find_climate_data()
    # A readable placeholder; readers turn it into an error that says how to point at data.
    return str(found) if found is not None else f"<no {kind} data: set GEOGEN_DATA>"


def register_resolvers() -> None:
    """Register geogen's OmegaConf resolvers (idempotent)."""
    if not OmegaConf.has_resolver("geogen.data"):
        OmegaConf.register_new_resolver("geogen.data", _data_resolver, use_cache=True)
    if not OmegaConf.has_resolver("geogen.repo"):
        OmegaConf.register_new_resolver("geogen.repo", lambda: str(REPO_ROOT))


register_resolvers()


def load_source_config(name: str, **overrides: Any) -> dict[str, Any]:
    """A shipped source config (``conf/source/<name>.yaml``) as a resolved dict.

    Parameters
    ----------
    name
        File name without extension (``"mch"``, ``"era5"``).
    **overrides
        Keys to replace, for example ``root="/data/radar/mch"``.
    """
    folder = config_dir() / "source"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"unknown source {name!r}; shipped sources: {', '.join(valid)}")
    cfg = OmegaConf.create(
        {
            "paths": OmegaConf.load(config_dir() / "paths" / "default.yaml"),
            "source": OmegaConf.load(path),
        }
    )
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"source.{key}", value, merge=False)
    return OmegaConf.to_container(cfg.source, resolve=True)  # type: ignore[return-value]


def source_config(source: Mapping[str, Any] | str, **overrides: Any) -> dict[str, Any]:
    """A source config as a plain dict: a shipped one by name, or a mapping, with ``overrides``."""
    if isinstance(source, str):
        return load_source_config(source, **overrides)
    return {**to_plain(source), **overrides}


def to_plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Resolved plain-dict copy of a config."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def main(argv: list[str] | None = None) -> int:
    """``python -m geogen.config [--download]``: print the radar data root, or say how to set it.

    With ``--download`` (or ``GEOGEN_DOWNLOAD=1``) and no data found, pysteps' example data are
    downloaded to ``~/.cache/geogen/pysteps-data`` first (needs internet).
    """
    import sys

    argv = sys.argv[1:] if argv is None else argv
    found = find_radar_data()
    if found is None and ("--download" in argv or os.environ.get("GEOGEN_DOWNLOAD") == "1"):
        from geogen.pysteps_import import import_pysteps

        pysteps = import_pysteps()
        print(f"downloading pysteps' example data to {DOWNLOAD_DIR} ...", file=sys.stderr)
        pysteps.datasets.download_pysteps_data(str(DOWNLOAD_DIR), force=False)
        found = find_radar_data()
    if found is None:
        print(NO_DATA_HELP, file=sys.stderr)
        return 2
    print(found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
