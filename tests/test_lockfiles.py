"""The lock files are complete hashed locks, consistent with each other and with the .in files.

requirements.txt (Heroku, scripts/run) and requirements-dev.txt (scripts/test, CI) are made by
scripts/lock from requirements.in and requirements-dev.in. These checks catch a hand-edited lock,
and a .in file edited without running scripts/lock.
"""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# One locked requirement: an exact pin, then the sha256 of each file pip may install.
LOCKED = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?P<hashes>(?: --hash=sha256:[0-9a-f]{64})+)"
)


def _entries(path):
    """Each requirement of a pip-compile output: (logical line, the comment lines that follow it)."""
    entries = []
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            if entries:
                entries[-1][1].append(line.strip(" #"))
        elif line.strip():
            entries.append((" ".join(line.split()), []))
    return entries


def _lock(name):
    """{canonical name: (version, hashes, sources)} of a lock file; fails on any line that is not a hashed pin."""
    locked = {}
    for line, comments in _entries(ROOT / name):
        match = LOCKED.fullmatch(line)
        assert match, f"{name}: not a pinned, hashed requirement (run scripts/lock): {line[:80]}"
        hashes = frozenset(match["hashes"].split())
        # pip-compile's "# via" comments: the .in files and locked packages that need this one.
        sources = {c.removeprefix("via").strip() for c in comments} - {""}
        locked[canonicalize_name(match["name"])] = (match["version"], hashes, sources)
    return locked


def _direct(name):
    """The requirements written in a .in file (its -r and -c lines left out)."""
    lines = (line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
def test_every_requirement_is_pinned_with_hashes(name):
    assert _lock(name)


def test_dev_lock_holds_the_runtime_lock_exactly():
    runtime, dev = _lock("requirements.txt"), _lock("requirements-dev.txt")
    for package, (version, hashes, _) in runtime.items():
        assert package in dev, f"{package} is in requirements.txt but not in requirements-dev.txt"
        assert dev[package][:2] == (version, hashes), f"{package} differs between the two locks"


@pytest.mark.parametrize(
    ("source", "lock", "own"),
    [
        ("requirements.in", "requirements.txt", {"-r requirements.in"}),
        ("requirements-dev.in", "requirements-dev.txt", {"-r requirements.in", "-r requirements-dev.in"}),
    ],
)
def test_lock_matches_its_in_file(source, lock, own):
    locked = _lock(lock)
    direct = _direct(source) + (_direct("requirements.in") if source != "requirements.in" else [])
    for requirement in direct:
        package = canonicalize_name(requirement.name)
        assert package in locked, f"{requirement.name} is a direct dependency but not in {lock}: run scripts/lock"
        assert requirement.specifier.contains(locked[package][0], prereleases=True), (
            f"{lock} has {package}=={locked[package][0]}, outside {source}'s {requirement}: run scripts/lock"
        )
    wanted = {canonicalize_name(requirement.name) for requirement in direct}
    for package, (_, _, sources) in locked.items():
        # A package locked only because a .in file named it must still be named there.
        if sources and sources <= own | {"-c requirements.txt"} and sources & own:
            assert package in wanted, f"{package} is in no .in file any more but still in {lock}: run scripts/lock"
