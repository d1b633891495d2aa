from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every test writes trained weights to a private cache, never to ~/.cache."""
    path = str(tmp_path_factory.mktemp("vulnscope-cache"))
    previous = os.environ.get("VULNSCOPE_CACHE_DIR")
    os.environ["VULNSCOPE_CACHE_DIR"] = path
    yield path
    if previous is None:
        del os.environ["VULNSCOPE_CACHE_DIR"]
    else:
        os.environ["VULNSCOPE_CACHE_DIR"] = previous


SINGLE_THREAD_PACKAGES = {"rg", "diagnostics", "cloning"}


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
def digits_cnn(isolated_cache):
    from vulnscope.models import pretrained

    return pretrained("digits-cnn")
