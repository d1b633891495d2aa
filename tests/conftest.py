from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
"""This process's pytest-xdist worker id (``gw0``, ...), None in a run without ``-n``."""


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread per pytest-xdist worker, for it and the processes it starts.

    ``-n auto`` starts one worker per core: with PyTorch's default of one thread per core
    in each, two workers on two cores run four threads that wait on each other. A thread
    count set by the caller (``OMP_NUM_THREADS``) is kept for the subprocesses.
    """
    if XDIST_WORKER is None:
        return
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the end-to-end tests first: those in ``tests/`` itself, and those marked slow.

    They start subprocesses, audits and worker groups, and take seconds to tens of seconds
    each; collected last (after the package folders), they would leave one xdist worker
    busy with them while the others have run out of tests. The order within each group is
    kept; no test depends on the order (xdist runs them in any order already).
    """
    items.sort(
        key=lambda item: 0 if item.path.parent == TESTS or item.get_closest_marker("slow") else 1
    )


def _run_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this pytest run that every xdist worker shares (its own without -n)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if XDIST_WORKER is not None else base


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every test writes trained weights to a private cache, never to ~/.cache.

    Under pytest-xdist the workers share one cache, so a reference model is trained once
    per run rather than once per worker; cache writes are atomic, so they do not race.
    """
    directory = _run_directory(tmp_path_factory) / "vulnscope-cache"
    directory.mkdir(exist_ok=True)
    path = str(directory)
    previous = os.environ.get("VULNSCOPE_CACHE_DIR")
    os.environ["VULNSCOPE_CACHE_DIR"] = path
    yield path
    if previous is None:
        del os.environ["VULNSCOPE_CACHE_DIR"]
    else:
        os.environ["VULNSCOPE_CACHE_DIR"] = previous


SINGLE_THREAD_PACKAGES = {"rg", "diagnostics", "cloning", "certify"}


@pytest.fixture(autouse=True, scope="module")
def single_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """One intra-op thread for the RG and diagnostics tests.

    They run many small products, solves and Lanczos steps: on a busy 2-core machine two
    threads wait on each other and run up to 20x slower than one, and the results do not
    depend on the thread count. (One fixture here rather than a conftest per folder: two
    folders' ``conftest`` modules clash when both are collected without packages.)
    """
    if request.path.parent.name not in SINGLE_THREAD_PACKAGES:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_test():
    from vulnscope.data import load_digits

    return load_digits("test")


@pytest.fixture(scope="session")
def run_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every xdist worker of this run shares: results computed once go there."""
    return _run_directory(tmp_path_factory)


@pytest.fixture(scope="session")
def digits_cnn(isolated_cache, tmp_path_factory):
    from vulnscope.models import pretrained

    # The first worker to get here trains and caches the model; the others wait and load it.
    with FileLock(_run_directory(tmp_path_factory) / "digits-cnn.lock"):
        return pretrained("digits-cnn")
