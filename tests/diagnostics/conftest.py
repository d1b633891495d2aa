import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The diagnostics run many small Lanczos steps and double-backward products: on a busy
    2-core machine two intra-op threads wait on each other and run far slower than one; the
    results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
