"""Session-wide fixtures: tiny random checkpoints in the official layout, written once per test run."""

import pytest
import torch

# First: without a GPU, qtts.kernels turns on Triton's interpreter, which only works if set before Triton is
# imported, and PyTorch imports Triton on some paths (torch 2.13's `torch._native.ops` does).
import qtts.kernels  # noqa: F401
from qtts.testing import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """`tiny_checkpoint(variant, mtp_projection=True)` -> folder of a tiny random checkpoint (cached)."""
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    made = {}

    def get(variant: str, mtp_projection: bool = True):
        key = (variant, mtp_projection)
        if key not in made:
            made[key] = write_tiny_checkpoint(root / f"{variant}-{int(mtp_projection)}", variant,
                                              mtp_projection=mtp_projection)
        return made[key]

    return get


@pytest.fixture
def one_thread():
    """Tiny matmuls run many times faster on one thread than on two contended ones (modules that run tiny
    models use it for every test: `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
