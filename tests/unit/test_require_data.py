"""Real-data tests skip when the data is missing, and fail instead with GEOGEN_REQUIRE_DATA=1."""

import re
from pathlib import Path

import conftest
import pytest
from conftest import missing_data_outcome, requires_climate_data, requires_shared_data


def test_found_data_runs_whatever_the_environment():
    assert missing_data_outcome("radar", Path("/data"), {}) == ("run", "")
    assert missing_data_outcome("climate", Path("/data"), {"GEOGEN_REQUIRE_DATA": "1"}) == (
        "run",
        "",
    )


@pytest.mark.parametrize("value", [None, "", "0"])
def test_missing_data_skips_unless_required(value):
    env = {} if value is None else {"GEOGEN_REQUIRE_DATA": value}
    outcome, reason = missing_data_outcome("radar", None, env)
    assert outcome == "skip" and "pysteps-data" in reason


@pytest.mark.parametrize("kind, hint", [("radar", "pysteps-data"), ("climate", "era5")])
def test_missing_data_fails_when_required(kind, hint):
    outcome, reason = missing_data_outcome(kind, None, {"GEOGEN_REQUIRE_DATA": "1"})
    assert outcome == "fail"
    assert hint in reason and "GEOGEN_REQUIRE_DATA=1" in reason


@pytest.mark.parametrize(
    "mark, kind", [(requires_shared_data, "radar"), (requires_climate_data, "climate")]
)
def test_the_setup_hook_skips_or_fails_a_marked_test(request, monkeypatch, mark, kind):
    # The hook pytest runs before every test, on this test's own item with the data mark added.
    request.node.add_marker(mark)
    monkeypatch.setattr(conftest, "SHARED_DATA", None)
    monkeypatch.setattr(conftest, "CLIMATE_DATA", None)
    monkeypatch.delenv("GEOGEN_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape(conftest.DATA_HINTS[kind])):
        conftest.pytest_runtest_setup(request.node)
    monkeypatch.setenv("GEOGEN_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="GEOGEN_REQUIRE_DATA=1 requires it"):
        conftest.pytest_runtest_setup(request.node)
    monkeypatch.setattr(conftest, "SHARED_DATA", Path("/data"))
    monkeypatch.setattr(conftest, "CLIMATE_DATA", Path("/data"))
    conftest.pytest_runtest_setup(request.node)  # data found: runs
