"""The dependency lock: every package pinned with hashes, the lock in step with what is asked for."""

import re
import subprocess
from pathlib import Path

import pytest

from tests.processes import BIN

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """{package: (version, number of hashes)} of a lock file."""
    packages: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = normalized(match[1])
            packages[current] = (match[2], 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = packages[current]
            packages[current] = (version, hashes + 1)
    return packages


def asked_for(path: Path) -> dict[str, str]:
    """{package: version} pinned directly in an .in file."""
    return {
        normalized(match[1]): match[2] for line in path.read_text().splitlines() if (match := PIN.match(line.strip()))
    }


@pytest.mark.parametrize("lock", ["runtime.txt", "dev.txt"])
def test_every_locked_package_is_pinned_with_hashes(lock):
    packages = locked(REQUIREMENTS / lock)
    assert packages
    unhashed = sorted(name for name, (_, hashes) in packages.items() if hashes == 0)
    assert not unhashed, f"{lock}: no hash for {unhashed}"
    text = (REQUIREMENTS / lock).read_text()
    unpinned = [
        line for line in text.splitlines() if line and not line.startswith((" ", "#", "-")) and not PIN.match(line)
    ]
    assert not unpinned, f"{lock}: not pinned with ==: {unpinned}"


@pytest.mark.parametrize(("source", "lock"), [("runtime.in", "runtime.txt"), ("dev.in", "dev.txt")])
def test_the_lock_has_each_direct_dependency_at_its_pinned_version(source, lock):
    packages = locked(REQUIREMENTS / lock)
    wrong = {
        name: (version, packages.get(name, ("missing",))[0])
        for name, version in asked_for(REQUIREMENTS / source).items()
        if packages.get(name, ("missing",))[0] != version
    }
    assert not wrong, f"{source} asks for, {lock} has: {wrong} (run make lock)"


def test_the_development_lock_keeps_the_runtime_versions():
    runtime, dev = locked(REQUIREMENTS / "runtime.txt"), locked(REQUIREMENTS / "dev.txt")
    differ = {
        name: (version, dev.get(name, ("missing",))[0])
        for name, (version, _) in runtime.items()
        if dev.get(name, ("missing",))[0] != version
    }
    assert not differ, f"runtime.txt vs dev.txt: {differ}"


def test_the_install_entry_point_is_the_lock():
    entry = (REQUIREMENTS.parent / "requirements.txt").read_text().splitlines()
    assert [line for line in entry if line and not line.startswith("#")] == ["-r requirements/dev.txt"]
    dockerfile = (REQUIREMENTS.parent / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements/runtime.txt" in dockerfile


@pytest.mark.parametrize(("source", "lock"), [("runtime.in", "runtime.txt"), ("dev.in", "dev.txt")])
def test_the_lock_is_what_resolving_the_sources_gives_today(source, lock, tmp_path):
    # What `make lock` runs; a different result means an .in file changed without `make lock`.
    output = tmp_path / lock
    subprocess.run(
        [
            str(BIN / "uv"),
            "pip",
            "compile",
            source,
            "--universal",
            "--python-version",
            "3.12",
            "--generate-hashes",
            "--no-header",
            "-q",
            "-o",
            str(output),
        ],
        cwd=REQUIREMENTS,
        check=True,
        timeout=120,
    )
    assert output.read_text() == (REQUIREMENTS / lock).read_text()
