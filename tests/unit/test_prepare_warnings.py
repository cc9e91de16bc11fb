"""A store with 0 crops: the prepare summary ends with the cause and the fix; so does training."""

import io
import logging

import pytest
from conftest import prepare_config
from rich.console import Console

from data_pipelines.config import validate_prepare_config
from data_pipelines.prepare import prepare
from data_pipelines.report import render_summary
from geogen.data.dataset import CropDataset, EmptySplitError
from geogen.io.store import sampling_warnings

# The paper's sampling (conf/sampling/dgmr.yaml) on a small, nearly dry archive.
DGMR = {"method": "dgmr", "q_min": 2.0e-4, "m": 0.1, "probability": 1.0, "rain_threshold": 0.1}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "dgmr.zarr"
    cfg = prepare_config(out, sampling=DGMR, source={"field": {"wet_fraction": 0.02}})
    return prepare(validate_prepare_config(cfg))


def test_the_summary_of_an_empty_store_ends_with_the_cause_and_the_fix(empty_store, caplog):
    summary = empty_store.summary
    assert summary["crops_written"] == 0 and summary["rejected_sampling"] > 0
    (warning,) = sampling_warnings(summary)
    assert "sampling=dgmr" in warning and "sampling=small_archive" in warning
    assert f"drew 0 of {summary['rejected_sampling']} crops" in warning
    console = Console(file=io.StringIO(), width=400)
    render_summary(summary, str(empty_store.path), console=console)
    lines = console.file.getvalue().strip().splitlines()
    assert lines[-1] == f"warning: {warning}"


def test_prepare_logs_the_warning(tmp_path, caplog):
    cfg = prepare_config(
        tmp_path / "s.zarr", sampling=DGMR, source={"field": {"wet_fraction": 0.02}}
    )
    with caplog.at_level(logging.WARNING, logger="data_pipelines.prepare"):
        prepare(validate_prepare_config(cfg))
    assert "sampling=small_archive" in caplog.text


def test_the_empty_split_error_points_to_the_fix(empty_store):
    with pytest.raises(EmptySplitError, match=r"split 'train' holds no sample.*small_archive"):
        CropDataset(empty_store.path, split="train")


@pytest.mark.parametrize(
    "summary, expected",
    [
        ({"crops_written": 5, "split_counts": {"train": 3, "val": 1, "test": 1}}, None),
        (
            {
                "crops_written": 2,
                "rejected_sampling": 98,
                "sampling_method": "dgmr",
                "split_counts": {"train": 0, "val": 1, "test": 1},
            },
            "no train crops: sampling=dgmr",
        ),
        (
            {"crops_written": 0, "rejected_sampling": 10, "sampling_method": "uniform"},
            "raise sampling.probability",
        ),
        ({"crops_written": 0, "crops_candidate": 0}, "no sequence of the archive was complete"),
        ({"crops_written": 0, "crops_candidate": 7, "rejected_nan": 7}, "max_nan_fraction"),
    ],
)
def test_sampling_warnings_name_the_cause(summary, expected):
    warnings = sampling_warnings(summary)
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expected in warnings[0], warnings
