"""dgmr_steps' scale-wise spread calibration (``StepsGenerator(spread="scales")``).

Closed forms on small synthetic tensors: an untrained calibration is STEPS, the gains keep
the ensemble's variance whatever its size, the two gains act on their own scales, and
probability matching keeps each member's rain-rate distribution.
"""

from __future__ import annotations

import pytest
import torch

from geogen.models.dgmr_steps import SPREAD_RATE, ScaleSpread, StepsGenerator

LEAD = 6


def _set_gains(spread: ScaleSpread, large: float, small: float) -> None:
    with torch.no_grad():
        spread.log_gain[0].fill_(torch.log(torch.tensor(large)) / SPREAD_RATE)
        spread.log_gain[1].fill_(torch.log(torch.tensor(small)) / SPREAD_RATE)


@pytest.mark.parametrize("match", [False, True])
def test_an_untrained_calibration_is_steps(match):
    net = StepsGenerator(
        lead_frames=LEAD, spread="scales", transform="log1p", residual=False, spread_match=match
    ).eval()
    gen = torch.Generator().manual_seed(0)
    steps = torch.relu(torch.randn(3, LEAD, 32, 32, generator=gen))
    mean = torch.relu(torch.randn(3, LEAD, 32, 32, generator=gen))
    out = net(
        torch.rand(3, 4, 32, 32), steps=steps, advected=steps, steps_mean=mean, ensemble_size=4
    )
    torch.testing.assert_close(out, steps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("members", [4, 20])
def test_gains_give_k_squared_times_the_variance_whatever_the_ensemble_size(members):
    # members ~ N(0, 1) about a true centre 0: deviations from their own mean scaled by a
    # must give an ensemble whose variance about the centre is k^2, for 4 as for 20 members
    spread = ScaleSpread(lead_frames=1, sigma=1.0, knots=1)
    k = 1.5
    _set_gains(spread, k, k)
    a = float(spread.gains(torch.zeros(1, dtype=torch.long), members).detach()[0, 0])
    assert a == pytest.approx(((k**2 - 1 / members) / (1 - 1 / members)) ** 0.5, rel=1e-5)
    x = torch.randn(members, 200_000, generator=torch.Generator().manual_seed(members))
    mean = x.mean(dim=0, keepdim=True)
    y = mean + a * (x - mean)
    assert float(y.var(unbiased=False)) == pytest.approx(k**2, rel=0.02)
    one = spread.gains(torch.zeros(1, dtype=torch.long), 1).detach()
    assert float(one[0, 0]) == pytest.approx(k)


def test_large_and_small_scale_gains_act_on_their_own_scales():
    spread = ScaleSpread(lead_frames=LEAD, sigma=2.0)
    _set_gains(spread, 2.0, 1.0)
    a = spread.gains(torch.arange(LEAD), 10).detach()
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    mean = torch.full((1, LEAD, 64, 64), 10.0)
    flat = torch.full_like(mean, 1.0)  # a constant deviation: all large scale
    checker = ((yy + xx) % 2 * 2 - 1).expand_as(mean)  # the 2-pixel wavelength: all small
    lead = torch.arange(LEAD)
    out = spread(mean + flat, mean, lead, 10) - mean
    torch.testing.assert_close(out, a[0].view(1, -1, 1, 1).expand_as(out), rtol=1e-5, atol=1e-5)
    out = spread(mean + checker, mean, lead, 10) - mean
    inner = (..., slice(8, -8), slice(8, -8))
    expected = checker * a[1].view(1, -1, 1, 1)
    torch.testing.assert_close(out[inner], expected[inner], rtol=1e-3, atol=1e-3)
    assert a[0, 0] > 1.9 and abs(float(a[1, 0]) - 1.0) < 0.01


def test_gains_are_piecewise_linear_over_lead_time_and_held_beyond():
    spread = ScaleSpread(lead_frames=7, knots=3)  # knots at leads 0, 3, 6
    with torch.no_grad():
        spread.log_gain.copy_(torch.tensor([[0.0, 0.03, 0.06], [0.0, -0.03, 0.0]]))
    logs = spread.log_gains(torch.arange(10))
    torch.testing.assert_close(logs[0, :7], torch.arange(7.0) * 0.01)
    torch.testing.assert_close(logs[0, 7:], torch.full((3,), 0.06))  # beyond training
    torch.testing.assert_close(logs[1, [0, 3, 6, 9]], torch.tensor([0.0, -0.03, 0.0, 0.0]))
    torch.testing.assert_close(logs[1, 1], torch.tensor(-0.01))


def test_matching_keeps_each_members_distribution_in_evaluation():
    spread = ScaleSpread(lead_frames=LEAD, sigma=2.0, match=True).eval()
    _set_gains(spread, 1.8, 1.2)
    gen = torch.Generator().manual_seed(3)
    member = torch.relu(torch.randn(2, LEAD, 32, 32, generator=gen))
    mean = torch.relu(torch.randn(2, LEAD, 32, 32, generator=gen) * 0.5)
    mean[..., :8, :] = 0.0
    member[..., :8, :] = 0.0  # dry in the member and the mean: stays dry
    out = spread(member, mean, torch.arange(LEAD), 4)
    torch.testing.assert_close(out.flatten(-2).sort(-1).values, member.flatten(-2).sort(-1).values)
    assert (out[..., :8, :] == 0).all()
    assert (out - member).abs().max() > 0.1  # the pattern moved
    # matched rain keeps the order of the recalibrated field
    plain = ScaleSpread(lead_frames=LEAD, sigma=2.0)
    plain.load_state_dict(spread.state_dict())
    raw = plain(member, mean, torch.arange(LEAD), 4)
    wet = out[0, 0] > 0
    order = raw[0, 0][wet].argsort()
    assert (out[0, 0][wet][order].diff() >= 0).all()
    # training fits the gains on the unmatched members (matching has no useful gradient)
    spread.train()
    fitted = spread(member, mean, torch.arange(LEAD), 4)
    torch.testing.assert_close(fitted, raw)
    fitted.sum().backward()
    assert spread.log_gain.grad is not None and spread.log_gain.grad.abs().sum() > 0


def test_spread_calibration_input_errors():
    with pytest.raises(ValueError, match="give the model-space transform"):
        StepsGenerator(spread="scales")
    with pytest.raises(ValueError, match="spread must be"):
        StepsGenerator(spread="wide")
    with pytest.raises(ValueError, match="without residual needs spread"):
        StepsGenerator(residual=False)
    net = StepsGenerator(lead_frames=LEAD, spread="scales", transform="log1p")
    steps = torch.rand(1, LEAD, 32, 32)
    with pytest.raises(ValueError, match="needs the STEPS ensemble's mean"):
        net(torch.rand(1, 4, 32, 32), steps=steps, advected=steps)
    with pytest.raises(ValueError, match="steps_mean must be"):
        net(
            torch.rand(1, 4, 32, 32),
            steps=steps,
            advected=steps,
            steps_mean=steps[:, :2],
            ensemble_size=4,
        )
