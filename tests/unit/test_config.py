"""Every shipped config composes and validates before anything is built."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data_pipelines.config import validate_prepare_config
from geogen.config import config_dir, load_source_config, to_plain
from geogen.io.gridded import GriddedSourceConfig
from geogen.io.radar import RadarSourceConfig
from geogen.io.synthetic import SyntheticSourceConfig

SOURCES = sorted(p.stem for p in (config_dir() / "source").glob("*.yaml"))
SCHEMAS = {
    "pysteps": RadarSourceConfig,
    "xarray": GriddedSourceConfig,
    "synthetic": SyntheticSourceConfig,
}


def compose_prepare(*overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="prepare", overrides=["out=x.zarr", *overrides])


def test_config_dir_is_the_repository_conf():
    assert (config_dir() / "prepare.yaml").is_file()
    assert Path(config_dir()).name == "conf"


@pytest.mark.parametrize("name", SOURCES)
def test_every_source_config_validates(name):
    cfg = load_source_config(name)
    assert cfg["name"] == name
    SCHEMAS[cfg["kind"]].model_validate(cfg)


def test_required_sources_are_shipped():
    required = {"mch", "fmi", "bom", "bom_c10", "opera", "knmi", "odim", "mrms", "era5"}
    assert required <= set(SOURCES)


@pytest.mark.parametrize("task", ["nowcast", "downscale"])
@pytest.mark.parametrize("sampling", ["dgmr", "small_archive", "uniform"])
def test_prepare_config_composes_and_validates(task, sampling):
    cfg = compose_prepare(f"task={task}", f"sampling={sampling}")
    valid = validate_prepare_config(to_plain(cfg))
    assert valid.task.name == task
    if task == "nowcast":
        assert (valid.sequence.context, valid.sequence.lead, valid.crop.size) == (4, 18, 256)
        assert valid.length == 22
    else:
        assert (valid.sequence.length, valid.crop.size, valid.task.factor) == (8, 128, 16)
    assert valid.sampling.q_min == {"dgmr": 2e-4, "small_archive": 0.05, "uniform": 0.0}[sampling]


def test_command_line_overrides_reach_the_schema():
    cfg = compose_prepare(
        "source=fmi",
        "source.root=/data/fmi",
        "crop.size=128",
        "sequence.context=2",
        "split.method=ranges",
        'split.ranges.test=[["2016-09-28T16:00","2016-09-28T18:00"]]',
    )
    valid = validate_prepare_config(to_plain(cfg))
    assert valid.source["root"] == "/data/fmi" and valid.crop.size == 128
    assert valid.split.ranges["test"] == [["2016-09-28T16:00", "2016-09-28T18:00"]]
    assert OmegaConf.select(cfg, "dask.address") is None


def test_source_overrides_from_python():
    cfg = load_source_config("mch", root="/archive/mch", timestep=10)
    assert cfg["root"] == "/archive/mch" and cfg["timestep"] == 10
