"""The environments others rebuild: requirements/lock.txt pins every package exactly, pyproject.toml
keeps loose ranges the lock satisfies, environment.yml (conda) installs the lock, and this
environment was installed from it."""
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _lock() -> dict[str, Requirement]:
    lines = [line for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    requirements = [Requirement(line) for line in lines]
    return {r.name.lower().replace("_", "-"): r for r in requirements}


def _pinned(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", requirement
    return spec.version


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    return [Requirement(r) for r in [*project["dependencies"], *(r for extra in extras for r in extra)]]


def test_lock_pins_every_package_exactly_and_satisfies_pyproject():
    lock = _lock()
    assert len(lock) > 100 and "idd-study" not in lock
    for requirement in lock.values():
        _pinned(requirement)
    for requirement in _pyproject_requirements():
        name = requirement.name.lower()
        assert name in lock, f"{name} (pyproject.toml) is not in {LOCK.name}"
        assert requirement.specifier.contains(_pinned(lock[name])), (str(requirement), str(lock[name]))


def test_this_environment_was_installed_from_the_lock():
    """make installs the lock: the versions the tests run with are the locked ones."""
    for name, requirement in _lock().items():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            raise AssertionError(f"{name} is locked but not installed (make install)") from None
        assert installed == _pinned(requirement), f"{name}: installed {installed}, locked {_pinned(requirement)}"


def test_environment_yml_installs_the_lock_on_conda_forge_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]  # the pytorch channel stopped publishing at 2.5
    python = re.search(r"Python (\d+\.\d+)", LOCK.read_text().splitlines()[0]).group(1)
    conda, pip = env["dependencies"][:-1], env["dependencies"][-1]["pip"]
    assert conda == [f"python={python}", "pip"]
    assert pip == [f"-r {LOCK.relative_to(ROOT)}", "-e ."]


def test_makefile_installs_from_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert f"LOCK := {LOCK.relative_to(ROOT)}" in makefile and "pip install --quiet -r $(LOCK)" in makefile
    assert not re.search(r"pip install[^\n]*\w==\d", makefile), "versions belong in the lock, not the Makefile"
