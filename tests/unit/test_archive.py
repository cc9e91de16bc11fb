from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from geogen.io.archive import (
    PathTimeParser,
    find_files_between,
    group_gaps,
    missing_times,
    scan_archive,
)

MCH = ("%Y%m%d", "AQC%y%j%H%M?_00005.801", "gif")


def make_tree(root, times, fmt="%Y%m%d/AQC%y%j%H%MF_00005.801.gif"):
    for t in times:
        path = root / t.strftime(fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_parser_reads_wildcards_and_day_of_year():
    parse = PathTimeParser(*MCH)
    assert parse("20160711/AQC161932245F_00005.801.gif") == datetime(2016, 7, 11, 22, 45)
    assert parse("20160711/AQC161932245L_00005.801.gif") == datetime(2016, 7, 11, 22, 45)
    # Not the layout: wrong extension, wrong depth.
    assert parse("20160711/AQC161932245F_00005.801.png") is None
    assert parse("AQC161932245F_00005.801.gif") is None
    # The file name decides; a folder naming another day flags the file as misplaced
    # (pysteps-data keeps the 00:00 file of 2016-07-12 in the 20160711 folder).
    parsed = parse.parse("20160711/AQC161940000V_00005.801.gif")
    assert parsed.time == datetime(2016, 7, 12, 0, 0) and parsed.misplaced
    assert not parse.parse("20160711/AQC161932245F_00005.801.gif").misplaced


def test_parser_repeated_directives_and_nested_layout():
    parse = PathTimeParser("prcp-c10/66/%Y/%m/%d", "66_%Y%m%d_%H%M00.prcp-c10", "nc")
    assert parse("prcp-c10/66/2020/10/31/66_20201031_235000.prcp-c10.nc") == datetime(
        2020, 10, 31, 23, 50
    )
    assert parse.parse("prcp-c10/66/2020/10/30/66_20201031_235000.prcp-c10.nc").misplaced
    # A file name contradicting itself is not of the layout.
    assert PathTimeParser("", "%d_%j", "nc")("11_193.nc") is None  # day 193 of 1900 is 12 July


def test_parser_rejects_layout_without_dates_and_unknown_directive():
    with pytest.raises(ValueError, match="no date directives"):
        PathTimeParser("", "static", "nc")
    with pytest.raises(ValueError, match="unsupported strftime directive %Q"):
        PathTimeParser("", "x_%Q", "nc")


def test_scan_keeps_misplaced_files_with_a_warning(tmp_path, caplog):
    make_tree(tmp_path, pd.date_range("2016-07-11 23:50", periods=2, freq="5min"))
    misplaced = tmp_path / "20160711" / "AQC161940000V_00005.801.gif"
    misplaced.write_bytes(b"x")
    listing = scan_archive(tmp_path, *MCH, timestep_minutes=5)
    assert listing.times[-1] == pd.Timestamp("2016-07-12 00:00")
    assert listing.paths[-1] == str(misplaced)
    assert "names another time than their file name" in caplog.text


def test_scan_finds_files_and_gaps(tmp_path):
    times = pd.date_range("2016-07-11 21:00", periods=12, freq="5min")
    kept = times.delete([4, 5, 9])
    make_tree(tmp_path, kept)
    (tmp_path / "20160711" / "README.txt").write_text("not radar")
    listing = scan_archive(tmp_path, *MCH, timestep_minutes=5)
    assert list(listing.times) == list(kept)
    assert all(p.endswith(".gif") for p in listing.paths)
    assert list(listing.missing) == [times[4], times[5], times[9]]
    assert listing.gaps() == [(times[4], times[5]), (times[9], times[9])]


def test_scan_bounds_report_missing_edges(tmp_path):
    times = pd.date_range("2016-07-11 21:00", periods=6, freq="5min")
    make_tree(tmp_path, times[1:])
    listing = scan_archive(
        tmp_path, *MCH, timestep_minutes=5, start=times[0], end=times[-1] + pd.Timedelta("10min")
    )
    assert list(listing.times) == list(times[1:])
    expected = [times[0], times[-1] + pd.Timedelta("5min"), times[-1] + pd.Timedelta("10min")]
    assert list(listing.missing) == expected


def test_scan_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_archive(tmp_path / "nope", *MCH, timestep_minutes=5)
    with pytest.raises(FileNotFoundError, match="no file under"):
        scan_archive(tmp_path, *MCH, timestep_minutes=5)


def test_find_files_between_matches_scan(tmp_path):
    times = pd.date_range("2016-07-11 21:00", periods=8, freq="5min")
    make_tree(tmp_path, times.delete(3))
    a = find_files_between(tmp_path, *MCH, 5, times[0], times[-1])
    b = scan_archive(tmp_path, *MCH, timestep_minutes=5, start=times[0], end=times[-1])
    assert list(a.times) == list(b.times)
    assert a.paths == b.paths
    assert list(a.missing) == [times[3]] == list(b.missing)
    with pytest.raises(FileNotFoundError, match="no file of the layout"):
        find_files_between(tmp_path, *MCH, 5, "2017-01-01", "2017-01-01 01:00")


def test_missing_times_between_events_is_compact():
    times = pd.DatetimeIndex(["2020-01-01 00:00", "2020-01-01 00:05", "2020-01-02 00:00"])
    missing = missing_times(times, pd.Timedelta("5min"), None, None)
    assert len(missing) == 24 * 12 - 2
    assert group_gaps(missing, pd.Timedelta("5min")) == [
        (pd.Timestamp("2020-01-01 00:10"), pd.Timestamp("2020-01-01 23:55"))
    ]
    assert len(missing_times(times[:2], pd.Timedelta("5min"), None, None)) == 0
    assert np.all(np.diff(missing.values) == np.timedelta64(5, "m"))


def test_find_files_between_single_time(tmp_path):
    times = pd.date_range("2016-07-11 21:00", periods=3, freq="5min")
    make_tree(tmp_path, times)
    one = find_files_between(tmp_path, *MCH, 5, times[1], times[1])
    assert list(one.times) == [times[1]] and len(one.paths) == 1
