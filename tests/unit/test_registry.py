"""One registry mechanism (geogen.registry.Registry) for sources, metrics and transforms."""

import ast
from pathlib import Path

import pytest

import geogen
from geogen.data.transforms import TRANSFORMS, get_transform
from geogen.io.radar import RadarSource
from geogen.io.sources import SOURCES, SourceError, get_source_class
from geogen.registry import Registry
from geogen.verification.interface import METRICS, VerificationError, get_metric

PACKAGE = Path(geogen.__file__).parent


def test_sources_metrics_and_transforms_share_the_registry():
    assert isinstance(SOURCES, Registry) and isinstance(METRICS, Registry)
    assert isinstance(TRANSFORMS, Registry)
    assert get_source_class("pysteps") is RadarSource and RadarSource.kind == "pysteps"
    assert {"crps", "fss", "rank_histogram", "rapsd"} <= set(METRICS.names())
    assert type(get_metric("crps")).name == "crps"
    assert get_transform("LOG10").name == "log10" and "Log10" in TRANSFORMS
    for registry, error, name in [
        (SOURCES, SourceError, "source kind"),
        (METRICS, VerificationError, "metric"),
        (TRANSFORMS, ValueError, "transform"),
    ]:
        with pytest.raises(error, match=f"unknown {name} 'nope'; valid {name}s: "):
            registry.factory("nope")


def test_registry_options():
    things = Registry("thing", error=KeyError, name_attr="label", case_insensitive=True)

    @things.register("Big")
    class Big:
        pass

    assert Big.label == "Big" and not hasattr(Big, "name")
    assert things.names() == ["Big"] and things.factory("bIG") is Big and "big" in things
    with pytest.raises(ValueError, match="thing 'BIG' is already registered by .*Big"):
        things.register("BIG")(type("Other", (), {}))
    things.unregister("big")
    assert things.names() == [] and "Big" not in things
    with pytest.raises(KeyError, match="unknown thing 3"):
        things.factory(3)


def test_builtin_modules_are_imported_by_name_on_first_lookup(tmp_path, monkeypatch):
    (tmp_path / "plugin_for_registry_test.py").write_text(
        "from tests_registry_owner import PLUGINS\n@PLUGINS.register('p')\nclass P:\n    pass\n"
    )
    (tmp_path / "tests_registry_owner.py").write_text(
        "from geogen.registry import Registry\n"
        "PLUGINS = Registry('plugin', builtin_modules=['plugin_for_registry_test', 'absent_mod'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tests_registry_owner

    assert tests_registry_owner.PLUGINS._factories == {}  # nothing imported yet
    assert tests_registry_owner.PLUGINS.names() == ["p"]  # a missing module is skipped


def _imported_modules(path):
    """Every module an ``import`` statement of ``path`` names, at any depth (functions too)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize(
    "owner, registry",
    [
        ("verification/interface.py", METRICS),
        ("io/sources.py", SOURCES),
        ("data/transforms.py", TRANSFORMS),
    ],
)
def test_registry_owners_import_none_of_their_plugin_modules(owner, registry):
    # No circle: the module owning a registry never imports the modules that register in it,
    # not even inside a function (the registry imports them by name).
    imported = _imported_modules(PACKAGE / owner)
    assert not imported & set(registry._builtin), imported & set(registry._builtin)
    assert "geogen.verification" not in imported and "geogen.io" not in imported
