"""versions.check(): a dependency older than pyproject's bound is a clear DependencyError, not a TypeError."""
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from unigrad import versions
from unigrad.versions import DependencyError

ROOT = Path(__file__).resolve().parents[2]
DECLARED = ["torch>=2.13", "transformers>=4.56.2", "safetensors>=0.4.5", 'deepspeed>=0.19; extra == "deepspeed"']


def _installed(monkeypatch, declared: list[str], versions_by_name: dict[str, str]) -> None:
    """Pretend unigrad declares ``declared`` and exactly ``versions_by_name`` is installed."""
    def version(name: str) -> str:
        if name not in versions_by_name:
            raise metadata.PackageNotFoundError(name)
        return versions_by_name[name]
    monkeypatch.setattr(versions.metadata, "requires", lambda dist: list(declared))
    monkeypatch.setattr(versions.metadata, "version", version)


def test_this_environment_meets_the_declared_bounds():
    versions.check()


def test_installed_metadata_is_pyprojects_list():
    """check() enforces pyproject's bounds only while the installed metadata is pyproject's (setup.sh
    reinstalls when pyproject.toml changes)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = {str(Requirement(line)) for line in project["dependencies"]}
    installed = {str(req) for req in versions.requirements()}
    assert installed == expected, "unigrad's installed metadata is older than pyproject.toml: run ./setup.sh"


def test_too_old_names_the_package_both_versions_and_the_command(monkeypatch):
    _installed(monkeypatch, DECLARED, {"torch": "2.13.0+cpu", "transformers": "4.46.3", "safetensors": "0.8.0"})
    with pytest.raises(DependencyError) as caught:
        versions.check()
    text = str(caught.value)
    assert "transformers 4.46.3 is installed, unigrad needs transformers>=4.56.2" in text
    assert "pip install --upgrade 'transformers>=4.56.2'" in text
    assert "torch" not in text and "safetensors" not in text   # local (+cpu) and newer versions pass


def test_every_outdated_package_is_named_in_one_message(monkeypatch):
    _installed(monkeypatch, DECLARED, {"torch": "2.12.1", "transformers": "4.46.3", "safetensors": "0.4.5"})
    with pytest.raises(DependencyError, match=r"torch 2\.12\.1 .*transformers 4\.46\.3 .*'torch>=2\.13' 'transformers"):
        versions.check()


def test_at_the_bound_passes(monkeypatch):
    _installed(monkeypatch, DECLARED, {"torch": "2.13.0", "transformers": "4.56.2", "safetensors": "0.4.5"})
    versions.check()


def test_missing_packages_are_left_to_their_import(monkeypatch):
    _installed(monkeypatch, DECLARED, {"torch": "2.13.0"})
    versions.check()


def test_extras_are_checked_only_when_asked(monkeypatch):
    _installed(monkeypatch, DECLARED, {"deepspeed": "0.18.9"})
    versions.check()
    with pytest.raises(DependencyError, match=r"deepspeed 0\.18\.9 is installed, unigrad needs deepspeed>=0\.19"):
        versions.check(("deepspeed",))


def test_without_unigrads_metadata_nothing_is_checked(monkeypatch):
    def missing(dist):
        raise metadata.PackageNotFoundError(dist)
    monkeypatch.setattr(versions.metadata, "requires", missing)
    assert versions.requirements() == []
    versions.check()

