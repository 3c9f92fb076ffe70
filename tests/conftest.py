import dataclasses

import pytest
import torch

from idd_lib.config import DataConfig, ModelConfig, Profile, TrainConfig
from idd_lib.data.synthetic import SyntheticConfig


@pytest.fixture(scope="session")
def shared_results(tmp_path_factory):
    """A results folder shared by the tests of one study run (run once, checked many ways)."""
    return tmp_path_factory.mktemp("shared_results")


@pytest.fixture(scope="session")
def quick_study(shared_results):
    """The quick profile's whole study, run once (every notebook through papermill)."""
    from idd_lib import study
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IDD_RESULTS", str(shared_results))
        return study.run_study("quick").parent


@pytest.fixture(autouse=True)
def isolated_results(request, tmp_path_factory, monkeypatch):
    """Every test writes under its own results folder, never the user's results/; tests that
    check the shared quick study see that study's folder."""
    shared = "quick_study" in request.fixturenames
    folder = request.getfixturevalue("shared_results") if shared else tmp_path_factory.mktemp("results")
    monkeypatch.setenv("IDD_RESULTS", str(folder))


@pytest.fixture
def tiny_profile() -> Profile:
    """Seconds-sized profile for unit tests of the training loop."""
    return Profile(
        name="tiny", description="unit-test size",
        data=DataConfig(synthetic=SyntheticConfig(num_train=16, num_val=4, num_tune=4, height=32, width=64),
                        batch_size=4),
        teacher=ModelConfig(layers=(1, 1, 1, 1), width=0.25, head_channels=32),
        student=ModelConfig(layers=(1, 1, 1, 1), width=0.125, head_channels=16),
        teacher_train=TrainConfig(iterations=4, lr=0.02, log_every=2),
        student_train=TrainConfig(iterations=4, lr=0.02, log_every=2),
        seeds=(0,), analysis_images=4, tsne_pixels_per_class=10)


def with_iterations(profile: Profile, iterations: int, **train) -> Profile:
    return dataclasses.replace(profile, student_train=dataclasses.replace(profile.student_train,
                                                                          iterations=iterations, **train))


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors on 2 shared cores: one intra-op thread avoids OpenMP spin-waiting under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def project_kernel():
    """The notebooks name the project's kernel: `make test` installs it, a bare pytest run too."""
    from idd_lib import notebook
    notebook.ensure_kernel()


@pytest.fixture(scope="session")
def benchmark_script():
    """Imports a script of benchmarks/ by name (they import their siblings, so the folder joins the path)."""
    import importlib
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")

    def load(name: str):
        sys.path.insert(0, folder)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(folder)
    return load
