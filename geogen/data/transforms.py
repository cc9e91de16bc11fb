"""Declared, invertible value transforms applied to fields before they reach a model.

Transforms are looked up by name in one registry, as in :mod:`pysteps.utils`::

    transform = get_transform("dB", threshold=0.1)
    model_values = transform.forward(rain)  # rain rate, mm/h -> dB
    rain_again = transform.inverse(model_values)
    same = get_transform(transform.name, **transform.params)  # rebuilt from its description

Every transform works on NumPy arrays and on torch tensors alike, returning the same kind of
array with the same floating dtype and device (integer input is promoted to the default float
type). NaN (for example pixels outside the radar domain) stays NaN in both directions. torch is
never imported here: a value is a tensor only if torch has been imported by the caller.

To apply a transform to an :class:`xarray.DataArray`, map it over the values, for example
``rain.copy(data=transform.forward(rain.values))``.
"""

from __future__ import annotations

import abc
import inspect
import math
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np

from geogen.registry import Registry

#: A NumPy array or a torch tensor; transforms return the same kind as they are given.
ArrayOrTensor = Any

TransformT = TypeVar("TransformT", bound="Transform")

#: The transforms by name, looked up case-insensitively.
TRANSFORMS: Registry[Transform] = Registry("transform", case_insensitive=True)


def _is_tensor(values: Any) -> bool:
    """Whether ``values`` is a torch tensor, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(values, torch.Tensor)


def _namespace_and_float(values: ArrayOrTensor) -> tuple[Any, ArrayOrTensor]:
    """Return the namespace of ``values`` (numpy or torch) and ``values`` as a float array."""
    if _is_tensor(values):
        torch = sys.modules["torch"]
        if not (values.is_floating_point() or values.is_complex()):
            values = values.to(torch.get_default_dtype())
        return torch, values
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.inexact):
        values = values.astype(np.float64)
    return np, values


def _positive(name: str, value: float) -> float:
    """``value`` as a float, checked to be finite and > 0."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


class Transform(abc.ABC):
    """Base class of the value transforms: a declared, (mostly) invertible map.

    Subclasses set :attr:`exactly_invertible`, implement :meth:`_forward` and :meth:`_inverse`
    with the array namespace ``xp`` (``numpy`` or ``torch``), and store every constructor
    argument as an attribute of the same name so that :attr:`params` can describe them.
    Register a subclass with :func:`register_transform`.
    """

    #: Registered name, set by :func:`register_transform`.
    name: ClassVar[str] = ""
    #: Whether ``inverse(forward(x)) == x`` (up to rounding) for every valid ``x``.
    exactly_invertible: ClassVar[bool] = True

    @property
    def params(self) -> dict[str, Any]:
        """Constructor arguments: ``get_transform(t.name, **t.params)`` rebuilds ``t``."""
        names = inspect.signature(type(self)).parameters
        return {name: getattr(self, name) for name in names}

    def forward(self, values: ArrayOrTensor) -> ArrayOrTensor:
        """Map physical values to model space.

        Parameters
        ----------
        values
            NumPy array or torch tensor of any shape, in the physical units of the transform.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            Same kind, shape, floating dtype and device as ``values``; NaN where it is NaN.
        """
        xp, values = _namespace_and_float(values)
        return self._forward(values, xp)

    def inverse(self, values: ArrayOrTensor) -> ArrayOrTensor:
        """Map model-space values back to physical values.

        Parameters
        ----------
        values
            NumPy array or torch tensor of any shape, in model space.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            Same kind, shape, floating dtype and device as ``values``; NaN where it is NaN.
        """
        xp, values = _namespace_and_float(values)
        return self._inverse(values, xp)

    def __call__(self, values: ArrayOrTensor) -> ArrayOrTensor:
        """Shorthand for :meth:`forward`."""
        return self.forward(values)

    @abc.abstractmethod
    def _forward(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        """Forward map of floating ``values`` with array namespace ``xp``."""

    @abc.abstractmethod
    def _inverse(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        """Inverse map of floating ``values`` with array namespace ``xp``."""

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.params == other.params

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.params.items()))))


def register_transform(name: str) -> Callable[[type[TransformT]], type[TransformT]]:
    """Class decorator registering a :class:`Transform` subclass under ``name``.

    Names are looked up case-insensitively; :func:`available_transforms` lists them as
    registered.

    Parameters
    ----------
    name
        The name passed to :func:`get_transform`.

    Raises
    ------
    ValueError
        If another class is already registered under ``name``.
    """

    def decorator(cls: type[TransformT]) -> type[TransformT]:
        if not (isinstance(cls, type) and issubclass(cls, Transform)):
            raise TypeError(f"register_transform({name!r}) expects a Transform subclass")
        return TRANSFORMS.register(name)(cls)  # type: ignore[return-value]

    return decorator


def available_transforms() -> list[str]:
    """Names of the registered transforms, sorted case-insensitively."""
    return TRANSFORMS.names()


def get_transform(name: str, **params: Any) -> Transform:
    """Build the transform registered as ``name`` (case-insensitive).

    Parameters
    ----------
    name
        One of :func:`available_transforms`.
    **params
        Arguments of the transform (see each class).

    Returns
    -------
    Transform
        The configured transform.

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the valid names), or ``params`` do not fit
        the transform or are out of range.
    """
    cls = TRANSFORMS.factory(name)
    signature = inspect.signature(cls)
    try:
        signature.bind(**params)
    except TypeError as exc:
        raise ValueError(f"transform {cls.name!r} takes {signature}: {exc}") from exc
    return cls(**params)


@register_transform("identity")
class IdentityTransform(Transform):
    """``y = x``, exactly invertible; returns a copy, in the units of the input."""

    def _forward(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        return values.clone() if xp is not np else values.copy()

    _inverse = _forward


@register_transform("log1p")
class Log1pTransform(Transform):
    """``y = log(1 + x / scale)``, exactly invertible: ``x = scale * expm1(y)``.

    Parameters
    ----------
    scale
        Rain rate (mm/h, > 0) at which the transform turns from linear to logarithmic.
        Inputs are expected to be ``>= 0`` mm/h (``x < -scale`` gives NaN); ``y`` is
        dimensionless.
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = _positive("scale", scale)

    def _forward(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        return xp.log1p(values / self.scale)

    def _inverse(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        return xp.expm1(values) * self.scale


@register_transform("dB")
class DBTransform(Transform):
    """Decibels of rain rate, as :func:`pysteps.utils.transformation.dB_transform`.

    Forward: ``y = 10 log10(x)`` for ``x >= threshold`` and ``y = zerovalue`` for
    ``x < threshold`` (x in mm/h, y in dB relative to 1 mm/h).

    Inverse: ``x = 10**(y / 10)`` for ``y >= 10 log10(threshold)`` and ``x = 0`` below (with
    a tolerance of ``1e-3`` dB so that rounding does not dry out the threshold itself).

    The transform is invertible above the threshold only: rain rates in
    ``[0, threshold)`` all come back as 0.

    Parameters
    ----------
    threshold
        Smallest wet rain rate, mm/h, > 0.
    zerovalue
        Value given to rain rates below ``threshold``, dB; by default pysteps' convention
        ``10 log10(threshold) - 5``. Must lie below ``10 log10(threshold)``.
    """

    exactly_invertible = False

    #: Tolerance of the inverse's threshold test, dB.
    tolerance: ClassVar[float] = 1e-3

    def __init__(self, threshold: float = 0.1, zerovalue: float | None = None) -> None:
        self.threshold = _positive("threshold", threshold)
        threshold_db = 10.0 * math.log10(self.threshold)
        self.zerovalue = threshold_db - 5.0 if zerovalue is None else float(zerovalue)
        if not self.zerovalue < threshold_db - self.tolerance:
            raise ValueError(
                f"zerovalue must lie below 10 log10(threshold) = {threshold_db:.3f} dB, "
                f"got {self.zerovalue}"
            )

    @property
    def threshold_db(self) -> float:
        """``10 log10(threshold)``, dB."""
        return 10.0 * math.log10(self.threshold)

    def _forward(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        dry = values < self.threshold  # False for NaN, so NaN goes through log10
        safe = xp.where(dry, self.threshold, values)
        return xp.where(dry, self.zerovalue, 10.0 * xp.log10(safe))

    def _inverse(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        dry = values < self.threshold_db - self.tolerance
        return xp.where(dry, 0.0, 10.0 ** (values / 10.0))


@register_transform("log10")
class Log10Transform(Transform):
    """Log-rain with a fixed dry value, as in the downscaling GAN of Leinonen et al. (2020).

    Forward (x in mm/h, y = log10 of mm/h):

    - ``y = log10(min(x, upper))`` for ``x >= threshold``;
    - ``y = log10(fill)`` for ``x < threshold`` (dry and very light rain).

    Inverse: ``x = 10**y``, except that ``y`` below the midpoint
    ``(log10(fill) + log10(threshold)) / 2`` gives ``x = 0``, so dry stays dry.

    The transform is invertible on ``[threshold, upper]`` only: rain rates below
    ``threshold`` come back as 0 and rates above ``upper`` as ``upper``.

    Parameters
    ----------
    threshold
        Smallest rain rate kept, mm/h, > 0.
    fill
        Rain rate standing for dry pixels, mm/h, in ``(0, threshold)``.
    upper
        Largest rain rate kept, mm/h, > ``threshold``.
    """

    exactly_invertible = False

    def __init__(self, threshold: float = 0.1, fill: float = 0.025, upper: float = 100.0) -> None:
        self.threshold = _positive("threshold", threshold)
        self.fill = _positive("fill", fill)
        self.upper = _positive("upper", upper)
        if not self.fill < self.threshold < self.upper:
            raise ValueError(
                f"need fill < threshold < upper, got fill={self.fill}, "
                f"threshold={self.threshold}, upper={self.upper}"
            )

    @property
    def dry_cut(self) -> float:
        """``y`` below which :meth:`inverse` returns 0: midpoint of the fill and threshold logs."""
        return 0.5 * (math.log10(self.fill) + math.log10(self.threshold))

    def _forward(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        dry = values < self.threshold  # False for NaN, so NaN goes through log10
        clipped = xp.where(values > self.upper, self.upper, values)
        safe = xp.where(dry, self.threshold, clipped)
        return xp.where(dry, math.log10(self.fill), xp.log10(safe))

    def _inverse(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        return xp.where(values < self.dry_cut, 0.0, 10.0**values)


@register_transform("standardize")
class StandardizeTransform(Transform):
    """``y = (x - mean) / std``, exactly invertible: ``x = mean + std * y``.

    Meant for continuous fields such as 2 m temperature, with ``mean`` and ``std`` computed on
    the training split of a crop store.

    Parameters
    ----------
    mean
        Mean, in the units of the field (required).
    std
        Standard deviation, in the units of the field, > 0 (required). ``y`` is
        dimensionless.
    """

    def __init__(self, mean: float, std: float) -> None:
        self.mean = float(mean)
        if not math.isfinite(self.mean):
            raise ValueError(f"mean must be finite, got {self.mean}")
        self.std = _positive("std", std)

    def _forward(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        return (values - self.mean) / self.std

    def _inverse(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        return values * self.std + self.mean


@register_transform("scale")
class ScaleTransform(Transform):
    """``y = x / scale``, exactly invertible: ``x = scale * y``.

    Parameters
    ----------
    scale
        Divisor, in the units of the field, > 0 (required). ``y`` is dimensionless.
    """

    def __init__(self, scale: float) -> None:
        self.scale = _positive("scale", scale)

    def _forward(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        return values / self.scale

    def _inverse(self, values: ArrayOrTensor, xp: Any) -> ArrayOrTensor:
        return values * self.scale
