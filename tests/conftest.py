"""Suite-wide settings.

- Tiny models run as fast on one intra-op thread, and far faster on a busy machine.
- ``pytest -m kernels`` runs mamba-ssm's Triton kernels on the CPU under Triton's interpreter:
  that must be switched on before transformers' Mamba modules are imported, so here, before
  collection. The default run deselects those tests (``-m "not kernels"`` in pyproject).
"""

import importlib.util

import pytest
import torch

KERNEL_PACKAGES = ("triton", "mamba_ssm")


def pytest_configure(config):
    if config.getoption("markexpr", "").strip() != "kernels":
        return
    missing = [p for p in KERNEL_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        config.kernels_skip = f"kernel tests need {' and '.join(missing)} (see the README's test command)"
        return
    from architectures.kernels import use_triton_interpreter

    use_triton_interpreter()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAMILIES = ["qwen3_vl", "qwen3_vl_moe", "nemotron_h_omni", "llava_onevision"]


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory):
    """One tiny checkpoint of each real video LLM family, written by the library's save_pretrained
    (tests that change one copy it first)."""
    from architectures.families.offline import write_checkpoint

    root = tmp_path_factory.mktemp("families")
    return {arch: write_checkpoint(arch, "tiny", root / arch) for arch in FAMILIES}
