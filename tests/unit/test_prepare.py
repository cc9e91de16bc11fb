import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from conftest import deep_update, downscale_overrides, prepare_config, synthetic_source

import data_pipelines.plan as plan_module
import data_pipelines.prepare as prepare_module
from data_pipelines.config import validate_prepare_config
from data_pipelines.prepare import block_mean, prepare
from geogen.io import StoreError, load_source, open_crop_store, split_indices


def build(path, **overrides):
    return prepare(validate_prepare_config(prepare_config(path, **overrides)))


def store_arrays(path):
    group = zarr.open_group(path, mode="r")
    return {name: np.asarray(group[name][:]) for name in group.array_keys()}


def assert_same_store(a, b):
    arrays_a, arrays_b = store_arrays(a), store_arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)
    attrs_a = zarr.open_group(a, mode="r").attrs.asdict()
    attrs_b = zarr.open_group(b, mode="r").attrs.asdict()
    for key in ("split_counts", "statistics", "task", "context", "lead", "grid"):
        assert attrs_a[key] == attrs_b[key], key


def test_crops_equal_source_frames(tmp_path):
    result = build(tmp_path / "s.zarr")
    group = open_crop_store(result.path)
    source = load_source(synthetic_source())
    frames = source.read_many(range(len(source.times)))
    data = group["precip"][:]
    t0 = pd.DatetimeIndex(group["t0"][:])
    y0, x0 = group["y0"][:], group["x0"][:]
    assert (
        len(data) == result.summary["crops_written"] == sum(result.summary["split_counts"].values())
    )
    for i in range(len(data)):
        k = source.times.get_loc(t0[i])
        expected = frames[k : k + 5, y0[i] : y0[i] + 32, x0[i] : x0[i] + 32]
        np.testing.assert_array_equal(data[i], expected)
    # Time axis: minutes relative to the last context frame.
    assert group["time"][:].tolist() == [-5, 0, 5, 10, 15]
    assert group.attrs["context"] == 2 and group.attrs["lead"] == 3
    # Samples are in time order, and every split is present.
    assert (np.diff(t0.asi8) >= 0).all()
    assert set(np.asarray(group["split"][:].tolist())) == {"train", "val", "test"}


def test_statistics_and_split_counts(tmp_path):
    path = build(tmp_path / "s.zarr").path
    group = open_crop_store(path)
    for split in ("train", "val", "test"):
        idx = split_indices(group, split)
        assert len(idx) == group.attrs["split_counts"][split]
        values = group["precip"].get_orthogonal_selection((idx,))
        stats = group.attrs["statistics"][split]
        assert stats["count"] == np.isfinite(values).sum()
        np.testing.assert_allclose(stats["mean"], np.nanmean(values.astype(np.float64)), rtol=1e-9)
        np.testing.assert_allclose(stats["std"], np.nanstd(values.astype(np.float64)), rtol=1e-6)
        assert stats["max"] == np.nanmax(values)


def test_store_opens_with_xarray(tmp_path):
    path = build(tmp_path / "s.zarr").path
    ds = xr.open_zarr(path)
    assert ds["precip"].dims == ("sample", "time", "y", "x")
    assert ds["precip"].attrs["units"] == "mm/h"
    assert {"t0", "split", "sample_prob", "y0", "x0"} <= set(ds.coords)
    assert ds["t0"].dtype.kind == "M"
    assert ds.attrs["status"] == "complete" and ds.attrs["task"] == "nowcast"
    for key in ("config", "versions", "provenance", "summary", "grid"):
        assert key in ds.attrs
    assert ds.attrs["versions"]["pysteps"] != "not installed"


def test_result_independent_of_partitioning(tmp_path):
    a = build(tmp_path / "a.zarr").path
    b = build(tmp_path / "b.zarr", parts={"samples": 1, "windows": 1, "frames": 3}).path
    assert_same_store(a, b)  # statistics too: they come from the plan, not from the parts


def test_rerun_is_noop_and_config_change_needs_overwrite(tmp_path):
    path = build(tmp_path / "s.zarr").path
    meta = path / "zarr.json"
    before = (meta.stat().st_mtime_ns, meta.read_bytes())
    again = build(tmp_path / "s.zarr")
    assert again.skipped
    assert (meta.stat().st_mtime_ns, meta.read_bytes()) == before
    with pytest.raises(StoreError, match="different config; pass overwrite=true"):
        build(tmp_path / "s.zarr", seed=7)
    rebuilt = build(tmp_path / "s.zarr", seed=7, overwrite=True)
    assert not rebuilt.skipped
    assert zarr.open_group(path).attrs["config"]["seed"] == 7
    assert not list(tmp_path.glob("*.old-*")) and not list(tmp_path.glob("*.partial"))


def test_refuses_to_touch_foreign_directory(tmp_path):
    (tmp_path / "mine.zarr").mkdir()
    (tmp_path / "mine.zarr" / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a geogen crop store; refusing"):
        build(tmp_path / "mine.zarr", overwrite=True)
    assert (tmp_path / "mine.zarr" / "precious.txt").read_text() == "keep me"


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("stage", ["_statistics_task", "_load_task"])
def test_resume_after_failure_gives_the_clean_store(tmp_path, monkeypatch, stage):
    clean = build(tmp_path / "clean.zarr").path
    original = getattr(prepare_module, stage)
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom("killed")
        return original(*args)

    monkeypatch.setattr(prepare_module, stage, flaky)
    out = tmp_path / "resumed.zarr"
    with pytest.raises(Boom):
        build(out)
    # Nothing that looks complete: only the partial build exists, and readers say so.
    assert not out.exists() and (tmp_path / "resumed.zarr.partial").exists()
    with pytest.raises(StoreError, match="partial build exists"):
        open_crop_store(out)

    done_calls = {"n": 0}

    def counting(*args):
        done_calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(prepare_module, stage, counting)
    result = build(out)
    assert not result.skipped
    assert 0 < done_calls["n"] < calls["n"] + 10  # only unfinished tasks were redone
    assert_same_store(clean, out)


def test_partial_of_other_config_needs_overwrite(tmp_path, monkeypatch):
    def fail(*args):
        raise Boom("stop")

    monkeypatch.setattr(prepare_module, "_load_task", fail)
    with pytest.raises(Boom):
        build(tmp_path / "s.zarr")
    monkeypatch.undo()
    with pytest.raises(StoreError, match="partial build of a different config"):
        build(tmp_path / "s.zarr", seed=1)
    assert build(tmp_path / "s.zarr", seed=1, overwrite=True).summary["crops_written"] > 0


def test_gaps_are_counted_and_never_bridged(tmp_path):
    dropped = ["2020-01-01T00:50", "2020-01-01T00:55"]
    result = build(tmp_path / "g.zarr", source=synthetic_source(drop_times=dropped))
    s = result.summary
    assert s["missing_time_steps"] == 2 and s["gaps"] == 1
    # Windows of 5 frames starting 00:30..00:45 need a dropped frame; so do 00:50/00:55 but
    # those start at no existing frame.
    assert s["rejected_gap"] == 4
    group = open_crop_store(result.path)
    t0 = pd.DatetimeIndex(group["t0"][:])
    frames = t0.values[:, None] + np.arange(5) * np.timedelta64(5, "m")
    assert not np.isin(frames, pd.DatetimeIndex(dropped).values).any()


def test_nan_crops_rejected_and_fraction_recorded(tmp_path):
    source = synthetic_source(nan_border=6, shape=[96, 96])
    result = build(
        tmp_path / "n.zarr",
        source=source,
        crop={"size": 32, "stride": 16},
        reject={"max_nan_fraction": 0.2},
    )
    assert result.summary["rejected_nan"] > 0
    group = open_crop_store(result.path)
    data = group["precip"][:]
    nan_fraction = np.isnan(data).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(group["nan_fraction"][:], nan_fraction, atol=1e-6)
    assert (nan_fraction <= 0.2).all() and (nan_fraction > 0.18).any()


def test_dgmr_importance_sampling_probabilities(tmp_path):
    sampling = {"method": "dgmr", "q_min": 0.3, "m": 1.0, "rain_threshold": 0.1}
    result = build(tmp_path / "d.zarr", sampling=sampling)
    group = open_crop_store(result.path)
    data = group["precip"][:].astype(np.float64)
    soft = np.nanmean(1 - np.exp(-data), axis=(1, 2, 3))
    np.testing.assert_allclose(group["sample_prob"][:], np.minimum(1, 0.3 + soft), rtol=1e-5)
    wet = np.nanmean(data >= 0.1, axis=(1, 2, 3))
    np.testing.assert_allclose(group["rain_fraction"][:], wet, rtol=1e-5)
    s = result.summary
    assert s["sampling_method"] == "dgmr" and s["rejected_sampling"] > 0
    # Rainier crops are kept more often: mean acceptance of kept crops exceeds the floor.
    considered = s["crops_candidate"] - s["rejected_nan"]
    assert 0.3 < s["crops_written"] / considered < 1.0


def test_no_crop_kept_still_gives_a_complete_store(tmp_path):
    sampling = {"method": "uniform", "probability": 1e-9}
    result = build(tmp_path / "e.zarr", sampling=sampling)
    assert result.summary["crops_written"] == 0
    group = open_crop_store(result.path)
    assert group["precip"].shape[0] == 0


def test_downscale_pairs_are_block_means(tmp_path):
    result = build(tmp_path / "p.zarr", **downscale_overrides(factor=4, size=32, length=4))
    group = open_crop_store(result.path)
    high, low = group["precip"][:], group["precip_lowres"][:]
    assert high.shape[1:] == (4, 32, 32) and low.shape[1:] == (4, 8, 8)
    expected = high.reshape(-1, 4, 8, 4, 8, 4).mean(axis=(3, 5))
    np.testing.assert_allclose(low, expected, rtol=1e-6)
    assert group.attrs["factor"] == 4 and group["time"][:].tolist() == [0, 5, 10, 15]


def test_block_mean_closed_form():
    field = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(block_mean(field, 2), [[2.5, 4.5], [10.5, 12.5]])
    field[0, 0] = np.nan
    assert np.isnan(block_mean(field, 2)[0, 0]) and block_mean(field, 2)[1, 1] == 12.5
    with pytest.raises(ValueError, match="not divisible"):
        block_mean(np.zeros((5, 4)), 2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"crop": {"size": 0, "stride": 8}}, "crop.size"),
        ({"sequence": {"lead": None}}, "needs sequence.context and sequence.lead"),
        ({**downscale_overrides(factor=5, size=32)}, "not a multiple of task.factor=5"),
        ({"split": {"fractions": {"train": 1.0, "holdout": 0.1}}}, "unknown splits"),
        ({"split": {"guard": "soon"}}, "not a duration"),
        ({"sampling": {"method": "best"}}, "sampling.method"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_configs_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_prepare_config(prepare_config(tmp_path / "x.zarr", **overrides))


def test_crop_larger_than_grid_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="crop size 128 is larger than the grid 96 x 96"):
        build(tmp_path / "x.zarr", crop={"size": 128, "stride": 128})


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    """Kill a real geogen-prepare process mid-load; rerunning gives the clean store."""
    source = synthetic_source(n_times=40, shape=[160, 160])
    overrides = {
        "source": source,
        "crop": {"size": 64, "stride": 32},
        "sequence": {"context": 4, "lead": 8, "stride": 1},
        "parts": {"samples": 8, "windows": 1, "frames": 4},
        "split": {"method": "blocks", "block": "1D", "guard": "0h"},
    }
    clean = build(tmp_path / "clean.zarr", **overrides).path
    out = tmp_path / "killed.zarr"
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(prepare_config(out, **overrides)))
    script = (
        "import json, sys\n"
        "from data_pipelines.config import validate_prepare_config\n"
        "from data_pipelines.prepare import prepare\n"
        f"prepare(validate_prepare_config(json.load(open({str(cfg_file)!r}))))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    done_dir = Path(str(out) + ".partial") / "_progress" / "load_done" / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if done_dir.is_dir() and len(list(done_dir.iterdir())) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    result = build(out, **overrides)
    assert not result.skipped
    assert_same_store(clean, out)


@pytest.mark.slow
def test_existing_dask_cluster_by_address(tmp_path):
    """dask.address=tcp://... runs the work on an existing cluster; same store as inline."""
    from distributed import LocalCluster

    inline = build(tmp_path / "inline.zarr").path
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        remote = build(tmp_path / "remote.zarr", dask={"address": cluster.scheduler_address}).path
    assert_same_store(inline, remote)


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    with pytest.raises(
        ConnectionError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"
    ):
        build(tmp_path / "x.zarr", dask={"address": "tcp://127.0.0.1:9", "connect_timeout": "1s"})


# -- one pass over the archive: same store as before, each frame decoded once ---------------
PATTERN = {"name": "pattern", "kind": "pattern", "n_times": 40, "shape": [64, 80]}
PATTERN_CONFIGS = {
    "nowcast": {
        "task": {"name": "nowcast", "factor": None},
        "crop": {"size": 24, "stride": 12},
        "sequence": {"context": 2, "lead": 4, "stride": 1},
        "reject": {"max_nan_fraction": 0.15},
        "sampling": {"method": "uniform", "probability": 0.7},
        "split": {
            "method": "ranges",
            "guard": "10min",
            "ranges": {
                "val": [["2020-01-01T01:30", "2020-01-01T02:00"]],
                "test": [["2020-01-01T02:40", "2020-01-01T03:15"]],
            },
        },
        "parts": {"samples": 9, "windows": 3, "frames": 5},
    },
    "downscale": {
        "task": {"name": "downscale", "factor": 4},
        "crop": {"size": 16, "stride": 16},
        "sequence": {"context": None, "lead": None, "length": 3, "stride": 2},
        "reject": {"max_nan_fraction": 0.05},
        "sampling": {"method": "uniform", "probability": 1.0},
        "split": {"method": "blocks", "block": "1h", "guard": "0h"},
        "parts": {"samples": 7, "windows": 2, "frames": 4},
    },
}
#: Per-array checksums (every file of the array: zarr.json and chunks) of the stores main
#: wrote (commit 16a1942, two stages that each read every frame) for PATTERN_CONFIGS, with
#: zarr 3.1 / numcodecs 0.16 (their codecs write the chunk bytes).
MAIN_CHECKSUMS = {
    "nowcast": {
        "nan_fraction": "19dce0ba56a9db6e",
        "precip": "2f1d17a63552a208",
        "rain_fraction": "20ea6869df6a0921",
        "sample_prob": "e788277672e990bd",
        "source": "92ade0e8151df8b2",
        "split": "39144e7f7293e059",
        "t0": "38e4fa997b356973",
        "time": "6cf38aaf599f5644",
        "x0": "b4028ff4e4d23639",
        "y0": "5019dabd481c2a33",
    },
    "downscale": {
        "nan_fraction": "4ca8034eab1a4cf0",
        "precip": "c139581a2539653c",
        "precip_lowres": "6cc8d8890b8db5ce",
        "rain_fraction": "bf6142108251c058",
        "sample_prob": "0e52efdf2c6904bb",
        "source": "b59e91cd7c7820c3",
        "split": "1f7131f1c4cecc83",
        "t0": "83709c53aed3ee05",
        "time": "ebcb8be03c751ae7",
        "x0": "54e2a5fc070e630d",
        "y0": "79289ce1e29e1aad",
    },
}


#: Per-array checksums of the decoded values (shape, dtype and values; independent of the
#: codec builds) of the same stores.
MAIN_VALUE_CHECKSUMS = {
    "nowcast": {
        "nan_fraction": "8dd7eb7e59c4cb6d",
        "precip": "e87e30284176d20f",
        "rain_fraction": "239b822262888fa6",
        "sample_prob": "64e9dd98c673b663",
        "source": "d9d680815ce6034f",
        "split": "b46693eb1b030b93",
        "t0": "245b46cd79df34ae",
        "time": "326d13ab786712f8",
        "x0": "0a24030a30ac9b90",
        "y0": "cb6ad5d57a2ff2da",
    },
    "downscale": {
        "nan_fraction": "793da5cb15d47ce5",
        "precip": "83bc64df0725139d",
        "precip_lowres": "4d2ea6f98154a482",
        "rain_fraction": "a97a8c295e404740",
        "sample_prob": "2f1f15e52b25a2de",
        "source": "4517e399f7575a79",
        "split": "d78d361267a5e707",
        "t0": "c743959d2a80ed0d",
        "time": "37fc0803735ed313",
        "x0": "5f1d0bf1340faf39",
        "y0": "bf5eb832e15a8f40",
    },
}


def value_checksums(root: Path) -> dict[str, str]:
    """sha256 (16 hex digits) of each array's shape, dtype and decoded values."""
    import hashlib

    out = {}
    for name, array in sorted(zarr.open_group(root, mode="r").arrays()):
        values = np.asarray(array[...])
        digest = hashlib.sha256(f"{values.shape}|{values.dtype.str}".encode())
        if values.dtype.kind in "OUT":  # strings: their text, not object pointers
            digest.update("\x00".join(map(str, values.ravel())).encode())
        else:
            digest.update(np.ascontiguousarray(values).tobytes())
        out[name] = digest.hexdigest()[:16]
    return out


def array_checksums(root: Path) -> dict[str, str]:
    """sha256 (16 hex digits) of every file of each array of a zarr v3 store."""
    import hashlib

    out = {}
    for meta in sorted(Path(root).rglob("zarr.json")):
        if json.loads(meta.read_text()).get("node_type") != "array":
            continue
        digest = hashlib.sha256()
        for path in sorted(p for p in meta.parent.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(meta.parent)).encode())
            digest.update(path.read_bytes())
        out[str(meta.parent.relative_to(root))] = digest.hexdigest()[:16]
    return out


def pattern_build(path, task, **overrides):
    import pattern_source  # noqa: F401  (registers kind "pattern")

    source = {**PATTERN, "drop": ["2020-01-01T01:00"]}
    cfg = prepare_config(path, source=source, seed=11, **PATTERN_CONFIGS[task])
    return prepare(validate_prepare_config(deep_update(cfg, overrides)))


@pytest.mark.parametrize("task", ["nowcast", "downscale"])
@pytest.mark.parametrize("dask", [{"address": "inline"}, {"n_workers": 2, "processes": False}])
def test_store_is_byte_identical_to_mains(tmp_path, task, dask):
    import numcodecs

    result = pattern_build(tmp_path / "s.zarr", task, dask={"address": None, **dask})
    assert result.summary["crops_written"] == {"nowcast": 83, "downscale": 81}[task]
    assert value_checksums(result.path) == MAIN_VALUE_CHECKSUMS[task]
    # The file bytes depend on the codec builds too: compared where they are main's.
    if zarr.__version__.startswith("3.1.") and numcodecs.__version__.startswith("0.16."):
        assert array_checksums(result.path) == MAIN_CHECKSUMS[task]


def test_each_frame_is_read_once_and_released(tmp_path, monkeypatch):
    """One pass: every frame is decoded once, and decoded chunks are freed as the plan moves
    on (the build never holds the archive)."""
    import gc
    import weakref

    from geogen.io.synthetic import SyntheticSource

    reads = []
    original = SyntheticSource.read
    monkeypatch.setattr(
        SyntheticSource, "read", lambda self, i: reads.append(i) or original(self, i)
    )
    alive, peak = set(), [0]
    read_task = prepare_module._read_task

    def tracked(*args):
        chunk = read_task(*args)
        alive.add(id(chunk))
        weakref.finalize(chunk, alive.discard, id(chunk))
        gc.collect()
        peak[0] = max(peak[0], len(alive))
        return chunk

    monkeypatch.setattr(prepare_module, "_read_task", tracked)
    source = synthetic_source(n_times=120)
    result = build(tmp_path / "s.zarr", source=source, parts={"frames": 4})
    assert result.summary["crops_written"] > 100
    assert sorted(reads) == list(range(120))
    # 30 chunks of 4 frames; a window of 5 frames spans 2, parts of 4 windows hold 3
    assert peak[0] <= 8


def test_plan_in_steps_equals_the_plan_at_once():
    """The samples planned as chunks of statistics arrive equal those planned at once, to
    the bit (one running sum over frames), with DGMR sampling and unreadable frames."""
    rng = np.random.default_rng(3)
    cfg = validate_prepare_config(
        prepare_config(
            "/tmp/x.zarr",
            source=synthetic_source(n_times=60, drop_times=["2020-01-01T02:00"]),
            sampling={"method": "dgmr", "q_min": 0.2, "m": 2.0},
        )
    )
    source = load_source(cfg.source)
    tiles = prepare_module.P.tile_origins(source.grid.shape, 32, 32)
    stats = rng.random((len(source.times), len(tiles), prepare_module.P.N_STATS)) * 50
    stats[..., prepare_module.P.STAT_NAN] = rng.integers(0, 30, stats.shape[:2])
    bad = np.zeros(len(source.times), dtype=bool)
    bad[[7, 33]] = True
    prepare_module.neutralise_bad_frames(stats, bad)
    at_once, counts = prepare_module.plan_samples(cfg, source, stats, bad, tiles)
    planner = prepare_module.SamplePlanner(cfg, source, tiles)
    steps, known = [], 0
    while known < len(source.times):
        known = min(known + int(rng.integers(1, 9)), len(source.times))
        steps.append(planner.advance(stats, bad, known))
    in_steps = pd.concat(steps)
    assert len(at_once) > 20 and counts["rejected_bad_file"] > 0
    pd.testing.assert_frame_equal(in_steps, at_once, check_exact=True)
    assert planner.summary_counts() == counts
    # parts: windows stay together; at most `samples` crops or `windows` windows per part
    parts = plan_module._parts(at_once, 5, 3)
    assert (np.diff(parts) >= 0).all()
    for p in np.unique(parts):
        rows = at_once[parts == p]
        assert rows["start"].nunique() <= 3
        assert len(rows) < 5 + rows.groupby("start").size().iloc[-1]
    assert not set(at_once["start"][parts == 0]) & set(at_once["start"][parts == 1])
