"""The shipped dgmr_advect checkpoint on the held-back MeteoSwiss event (../shared/data).

Its index, card and a forecast on a synthetic context need no data:
tests/unit/test_shipped_index.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_shared_data

import geogen
from geogen.checkpoint import shipped_index
from geogen.forecasting import get_forecaster, open_forecast, read_context, read_frames
from geogen.verification.scoring import score_files

pytestmark = [pytest.mark.integration, requires_shared_data]

ISSUE = "2016-07-11T22:00"
REGION = [192, 352, 128, 128]


def test_shipped_model_beats_persistence_on_the_held_back_event(tmp_path):
    model = get_forecaster("dgmr_advect", batch_members=10)
    context = read_context("mch", ISSUE, model.n_context, region=REGION)
    fc = geogen.forecast(model, context, members=10, leads=6, seed=1)
    assert fc.shape == (10, 6, 128, 128)
    settings = json.loads(fc.attrs["settings"])
    assert settings["checkpoint_sha256"] == shipped_index()["dgmr_advect"]["sha256"]
    obs = read_frames("mch", "2016-07-11T22:05", "2016-07-11T22:30", region=REGION).values
    persistence = np.nanmean(np.abs(context.values[-1] - obs))
    members = fc.values
    skill = np.nanmean(np.abs(members - obs[None]))
    spread = np.nanmean(
        np.abs(members[:, None] - members[None]).reshape(-1, *members.shape[1:]), axis=0
    )
    crps = skill - 0.5 * np.nanmean(spread) * 10 / 9  # fair ensemble CRPS
    assert crps < persistence  # trained skill, not noise
    assert np.nanmean(np.std(members, axis=0)) > 0.01  # the members differ


def test_geogen_forecast_uses_the_shipped_checkpoint(tmp_path):
    out = tmp_path / "fc.nc"
    cmd = [
        str(Path(sys.executable).with_name("geogen-forecast")),
        "model=dgmr_advect",
        f"time={ISSUE}",
        f"region={json.dumps(REGION).replace(' ', '')}",
        "margin=32",
        "members=4",
        "leads=3",
        "progress=false",
        f"out={out}",
        f"paths.log_dir={tmp_path}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    fc = open_forecast(out)
    assert fc.shape == (4, 3, 128, 128)
    assert fc.attrs["settings"]["checkpoint_sha256"] == shipped_index()["dgmr_advect"]["sha256"]
    scored = score_files([out], "mch", settings={"metrics": ["crps"], "bootstrap": {"n": 0}})
    assert set(scored.scores["model"]) == {"dgmr_advect"}
    bad = subprocess.run(
        [*cmd[:-2], f"out={tmp_path / 'bad.nc'}", "ckpt_sha256=" + "0" * 64, cmd[-1]],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert bad.returncode == 1 and "SHA-256 mismatch" in bad.stdout + bad.stderr
