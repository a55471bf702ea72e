"""hf_autodrop: drop the learning rate automatically when the angular velocity of the parameters saturates.

The core (`AutoDrop`, `AutoDropConfig`, `angle_degrees`, `newest_complete_checkpoint`) needs only torch.
`AutoDropCallback` (for the Hugging Face `Trainer`) is imported lazily, so `import hf_autodrop` works without
transformers.
"""

from .angles import angle_degrees
from .checkpoints import checkpoint_problem, newest_complete_checkpoint
from .config import AutoDropConfig
from .controller import AutoDrop, Measurement

__version__ = "0.1.0"

__all__ = [
    "AutoDrop",
    "AutoDropCallback",
    "AutoDropConfig",
    "Measurement",
    "angle_degrees",
    "checkpoint_problem",
    "newest_complete_checkpoint",
    "__version__",
]


def __getattr__(name: str):
    # Lazy: transformers (callback, demo) and timm (models) load only when asked for.
    if name == "AutoDropCallback":
        from .callback import AutoDropCallback

        return AutoDropCallback
    if name in ("models", "callback", "demo"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hf_autodrop' has no attribute {name!r}")
