import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def autodrop_logs(caplog):
    """Capture the `hf_autodrop` logger at INFO."""
    caplog.set_level(logging.INFO, logger="hf_autodrop")
    return caplog
