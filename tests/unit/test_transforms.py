"""Tests of the invertible value transforms (geogen.data.transforms)."""

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch
from pysteps.utils.transformation import dB_transform

from geogen.data import transforms
from geogen.data.transforms import (
    DBTransform,
    Log10Transform,
    Transform,
    available_transforms,
    get_transform,
    register_transform,
)

#: (name, params, physical values that come back exactly)
CASES = [
    ("identity", {}, [-3.0, 0.0, 0.3, 12.5]),
    ("log1p", {}, [0.0, 0.05, 1.0, 30.0, 150.0]),
    ("log1p", {"scale": 2.5}, [0.0, 0.05, 1.0, 30.0]),
    ("dB", {}, [0.1, 0.37, 1.0, 30.0, 150.0]),
    ("dB", {"threshold": 0.2, "zerovalue": -20.0}, [0.2, 1.0, 30.0]),
    ("log10", {}, [0.1, 0.37, 1.0, 30.0, 100.0]),
    ("standardize", {"mean": 280.0, "std": 12.0}, [250.0, 280.0, 301.5]),
    ("scale", {"scale": 4.0}, [0.0, 0.5, 64.0]),
]
CASE_IDS = [
    name + "".join(f"-{key}={value}" for key, value in params.items()) for name, params, _ in CASES
]


def _rain(seed: int = 0, size: int = 200) -> np.ndarray:
    """Rain-like values: 40 % dry, log-normal elsewhere, mm/h."""
    rng = np.random.default_rng(seed)
    values = rng.lognormal(mean=0.0, sigma=1.5, size=size)
    values[rng.random(size) < 0.4] = 0.0
    return values


def test_available_names():
    assert available_transforms() == ["dB", "identity", "log10", "log1p", "scale", "standardize"]


@pytest.mark.parametrize(("name", "params", "exact_values"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_round_trip_preserves_dtype(name, params, exact_values, dtype):
    transform = get_transform(name, **params)
    values = np.array(exact_values, dtype=dtype).reshape(-1, 1)
    encoded = transform.forward(values)
    decoded = transform.inverse(encoded)
    assert isinstance(encoded, np.ndarray) and isinstance(decoded, np.ndarray)
    assert encoded.dtype == dtype and decoded.dtype == dtype
    assert encoded.shape == values.shape
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(decoded, values, rtol=rtol, atol=rtol)


@pytest.mark.parametrize(("name", "params", "exact_values"), CASES, ids=CASE_IDS)
def test_torch_matches_numpy_and_preserves_dtype(name, params, exact_values):
    transform = get_transform(name, **params)
    values = np.concatenate([exact_values, _rain()]).astype(np.float32).reshape(1, -1)
    tensor = torch.from_numpy(values)
    encoded = transform.forward(tensor)
    decoded = transform.inverse(encoded)
    assert isinstance(encoded, torch.Tensor) and isinstance(decoded, torch.Tensor)
    assert encoded.dtype == torch.float32 and decoded.dtype == torch.float32
    assert encoded.device == tensor.device
    np.testing.assert_allclose(encoded.numpy(), transform.forward(values), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        decoded.numpy(), transform.inverse(transform.forward(values)), rtol=2e-6
    )
    exact = torch.tensor(exact_values, dtype=torch.float32)
    torch.testing.assert_close(transform.inverse(transform.forward(exact)), exact)


def test_torch_float64_and_gradients():
    transform = get_transform("log1p")
    values = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    encoded = transform.forward(values)
    assert encoded.dtype == torch.float64
    encoded.sum().backward()
    torch.testing.assert_close(values.grad, 1.0 / (1.0 + values.detach()))


def test_integer_input_is_promoted_to_float():
    transform = get_transform("scale", scale=2.0)
    assert transform.forward(np.array([1, 2, 3])).dtype == np.float64
    assert transform.forward(torch.tensor([1, 2, 3])).dtype == torch.get_default_dtype()
    np.testing.assert_allclose(transform.forward(np.array([1, 2, 3])), [0.5, 1.0, 1.5])


@pytest.mark.parametrize(("name", "params", "exact_values"), CASES, ids=CASE_IDS)
def test_nan_propagates_both_ways(name, params, exact_values):
    transform = get_transform(name, **params)
    values = np.array([np.nan, *exact_values, np.nan, 0.0], dtype=np.float32)
    encoded = transform.forward(values)
    decoded = transform.inverse(encoded)
    nan = np.isnan(values)
    np.testing.assert_array_equal(np.isnan(encoded), nan)
    np.testing.assert_array_equal(np.isnan(decoded), nan)
    tensor_encoded = transform.forward(torch.from_numpy(values))
    np.testing.assert_array_equal(torch.isnan(tensor_encoded).numpy(), nan)
    np.testing.assert_array_equal(torch.isnan(transform.inverse(tensor_encoded)).numpy(), nan)


@pytest.mark.parametrize("threshold", [0.1, 0.5])
def test_db_forward_matches_pysteps(threshold):
    values = np.concatenate([_rain(1), [0.0, threshold, threshold * 0.999, 250.0, np.nan]])
    expected, metadata = dB_transform(values, threshold=threshold)
    transform = get_transform("dB", threshold=threshold)
    np.testing.assert_allclose(transform.forward(values), expected, rtol=1e-12, equal_nan=True)
    assert transform.zerovalue == pytest.approx(metadata["zerovalue"])
    assert transform.threshold_db == pytest.approx(metadata["threshold"])
    # the inverse agrees with pysteps' inverse on the forward output
    expected_back, _ = dB_transform(expected, metadata, inverse=True)
    np.testing.assert_allclose(
        transform.inverse(expected), expected_back, rtol=1e-12, equal_nan=True
    )


def test_db_hand_made_values():
    transform = DBTransform()  # threshold 0.1 mm/h -> -10 dB, zerovalue -15 dB
    np.testing.assert_allclose(
        transform.forward(np.array([0.0, 0.05, 0.1, 1.0, 100.0])), [-15, -15, -10, 0, 20]
    )
    np.testing.assert_allclose(
        transform.inverse(np.array([-15.0, -10.5, -10.0005, -10.0, 0.0, 20.0])),
        [0.0, 0.0, 10**-1.00005, 0.1, 1.0, 100.0],
    )


def test_log10_follows_the_leinonen_rule():
    transform = get_transform("log10")
    values = np.array([0.0, 0.05, 0.0999, 0.1, 1.0, 10.0, 100.0, 200.0])
    expected = [math.log10(0.025)] * 3 + [-1.0, 0.0, 1.0, 2.0, 2.0]
    np.testing.assert_allclose(transform.forward(values), expected, rtol=1e-12)
    # inverse: below the midpoint of log10(0.025) and log10(0.1) (= log10(0.05)) is dry
    assert transform.dry_cut == pytest.approx(math.log10(0.05))
    encoded = np.array([math.log10(0.025), -1.31, -1.29, -1.0, 0.0, 2.0])
    np.testing.assert_allclose(
        transform.inverse(encoded), [0.0, 0.0, 10**-1.29, 0.1, 1.0, 100.0], rtol=1e-12
    )
    # invertible on [threshold, upper] only
    np.testing.assert_allclose(
        transform.inverse(transform.forward(values)), [0, 0, 0, 0.1, 1, 10, 100, 100]
    )


def test_dry_stays_dry_and_exactness_is_declared():
    rain = _rain(2)
    for name in ("dB", "log10"):
        transform = get_transform(name)
        assert not transform.exactly_invertible
        decoded = transform.inverse(transform.forward(rain))
        np.testing.assert_array_equal(decoded == 0, rain < 0.1)
    for name, params in [("identity", {}), ("log1p", {}), ("scale", {"scale": 3.0})]:
        assert get_transform(name, **params).exactly_invertible


def test_log1p_and_standardize_formulas():
    np.testing.assert_allclose(
        get_transform("log1p", scale=2.0).forward(np.array([0.0, 2.0, 6.0])),
        [0.0, math.log(2.0), math.log(4.0)],
    )
    np.testing.assert_allclose(
        get_transform("standardize", mean=280.0, std=10.0).forward(np.array([270.0, 300.0])),
        [-1.0, 2.0],
    )


def test_identity_returns_a_copy():
    values = np.array([1.0, 2.0])
    encoded = get_transform("identity").forward(values)
    encoded[0] = 5.0
    assert values[0] == 1.0


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown transform 'boxcox'") as info:
        get_transform("boxcox")
    for name in available_transforms():
        assert name in str(info.value)


def test_names_are_case_insensitive():
    assert isinstance(get_transform("DB"), DBTransform)
    assert isinstance(get_transform("LOG10"), Log10Transform)


@pytest.mark.parametrize(("name", "params", "exact_values"), CASES, ids=CASE_IDS)
def test_params_round_trip(name, params, exact_values):
    transform = get_transform(name, **params)
    rebuilt = get_transform(transform.name, **transform.params)
    assert rebuilt == transform
    assert hash(rebuilt) == hash(transform)
    assert repr(rebuilt) == repr(transform)
    assert type(transform).__name__ in repr(transform)
    for key, value in params.items():
        assert transform.params[key] == value
        assert f"{key}={value!r}" in repr(transform)


def test_db_default_zerovalue_is_recorded():
    assert get_transform("dB", threshold=1.0).params == {"threshold": 1.0, "zerovalue": -5.0}


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("standardize", {}, "mean"),
        ("standardize", {"mean": 280.0}, "std"),
        ("standardize", {"mean": 280.0, "std": 0.0}, "std"),
        ("scale", {}, "scale"),
        ("scale", {"scale": -1.0}, "scale"),
        ("log1p", {"sigma": 1.0}, "sigma"),
        ("log1p", {"scale": 0.0}, "scale"),
        ("dB", {"threshold": 0.0}, "threshold"),
        ("dB", {"threshold": 0.1, "zerovalue": -5.0}, "zerovalue"),
        ("log10", {"fill": 0.2}, "fill < threshold"),
        ("log10", {"upper": 0.05}, "threshold < upper"),
    ],
)
def test_invalid_params(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_transform(name, **params)


def test_register_transform(monkeypatch):
    monkeypatch.setattr(transforms.TRANSFORMS, "_factories", dict(transforms.TRANSFORMS._factories))
    monkeypatch.setattr(transforms.TRANSFORMS, "_names", dict(transforms.TRANSFORMS._names))

    @register_transform("negate")
    class Negate(Transform):
        def _forward(self, values, xp):
            return -values

        _inverse = _forward

    assert "negate" in available_transforms()
    transform = get_transform("negate")
    assert transform.name == "negate" and transform.params == {}
    np.testing.assert_array_equal(transform(np.array([1.0, -2.0])), [-1.0, 2.0])
    with pytest.raises(ValueError, match="already registered"):
        register_transform("NEGATE")(type("Other", (Transform,), {}))
    with pytest.raises(TypeError):
        register_transform("not_a_transform")(dict)


def test_module_works_without_torch(monkeypatch):
    """The module never imports torch: it loads and runs with torch made unimportable."""
    monkeypatch.setitem(sys.modules, "torch", None)
    spec = importlib.util.spec_from_file_location("transforms_without_torch", transforms.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    np.testing.assert_allclose(module.get_transform("dB").forward(np.array([1.0])), [0.0])
