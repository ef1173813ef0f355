"""Suite-wide settings: tiny models run as fast on one intra-op thread, and far faster on a busy machine."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
