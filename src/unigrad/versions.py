"""The run-time check that unigrad's dependencies are at least the versions it declares.

A dependency older than its declared lower bound fails deep inside a call (``TypeError: ... got an
unexpected keyword argument 'dtype'``, a missing attribute); ``check()`` says so up front instead:
which package, the version installed, the version needed and the pip command that fixes it.

The bounds are read from unigrad's installed metadata (``importlib.metadata.requires("unigrad")``),
which pip writes from pyproject.toml, so pyproject is the one list. A dependency that is not
installed at all is left to the import that needs it: several are optional at run time
(tensorboard, math-verify), and each of those says what to install where it is used.
"""
from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

DISTRIBUTION = "unigrad"


class DependencyError(RuntimeError):
    """An installed dependency is older than the version unigrad declares it needs."""


def requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    """unigrad's declared requirements: the core ones, plus those of each extra in ``extras``.

    Empty when unigrad itself is not installed (imported from a source tree): there is no metadata
    to compare with then.
    """
    try:
        declared = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    wanted = []
    for line in declared:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in ("", *extras)):
            wanted.append(requirement)
    return wanted


def outdated(extras: tuple[str, ...] = ()) -> list[tuple[Requirement, str]]:
    """``(requirement, installed version)`` for each installed dependency outside its declared range."""
    found = []
    for requirement in requirements(extras):
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            continue
        try:
            version = Version(installed)
        except InvalidVersion:  # a build with a non-standard version string: nothing sound to compare
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            found.append((requirement, installed))
    return found


def message(stale: list[tuple[Requirement, str]]) -> str:
    """One paragraph naming each outdated package, its installed and needed versions, and the fix."""
    needs = "; ".join(f"{req.name} {installed} is installed, unigrad needs {req.name}{req.specifier}"
                      for req, installed in stale)
    fix = " ".join(f"'{req.name}{req.specifier}'" for req, _ in stale)
    return f"{needs}. Upgrade with: pip install --upgrade {fix}"


def check(extras: tuple[str, ...] = ()) -> None:
    """Raise ``DependencyError`` when an installed dependency (core, or of ``extras``) is too old."""
    stale = outdated(extras)
    if stale:
        raise DependencyError(message(stale))


__all__ = ["DependencyError", "check", "message", "outdated", "requirements"]
