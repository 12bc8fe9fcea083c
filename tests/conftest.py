import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from tiny_models import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_dir):
    import sectensor

    return sectensor.load_lvlm(tiny_llava_dir, device="cpu")


@pytest.fixture(scope="session")
def pictures():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(4)]


@pytest.fixture(scope="session")
def build_training_data():
    """scripts/build_training_data.py as a module: its wording lists and row builders."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "build_training_data.py"
    spec = importlib.util.spec_from_file_location("build_training_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
