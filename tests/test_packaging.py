"""environment.yml (conda users) must list what pyproject.toml installs, with the same bounds."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}


def _pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {re.split(r"[<>=!~ ]", r, maxsplit=1)[0]: r for r in reqs}


def _conda_requirements():
    dependencies = (ROOT / "environment.yml").read_text().split("\ndependencies:\n", 1)[1]
    lines = re.findall(r"^  - ([A-Za-z0-9_.\-]+)(.*)$", dependencies, re.M)
    return {name: spec.strip() for name, spec in lines if name not in ("python", "pip")}


def test_environment_yml_matches_pyproject():
    pyproject, conda = _pyproject_requirements(), _conda_requirements()
    expected = {CONDA_NAMES.get(name, name) for name in pyproject}
    assert set(conda) == expected
    for name, requirement in pyproject.items():
        conda_spec = conda[CONDA_NAMES.get(name, name)]
        if name in ("torch", "torchvision"):
            continue  # pinned exactly below
        assert requirement.endswith(conda_spec), (name, requirement, conda_spec)


def test_torch_pins_agree_between_makefile_and_environment():
    pins = dict(re.findall(r"(torch|torchvision)==([\d.]+)", (ROOT / "Makefile").read_text()))
    conda = _conda_requirements()
    assert conda["pytorch"] == f"={pins['torch']}" and conda["torchvision"] == f"={pins['torchvision']}"
    assert pins == {"torch": "2.14.1", "torchvision": "0.29.1"}
