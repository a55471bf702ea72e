"""A clear error when an optional dependency (an "extra" of the package) is not installed."""

from __future__ import annotations

import contextlib
import importlib.util

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency of hf_autodrop is not installed; the message names the extra to install."""


@contextlib.contextmanager
def require(extra: str, feature: str, *packages: str):
    """Turn the absence of one of `packages` (import names) inside the block into a `MissingExtraError`.

    An ImportError about any other module, or from one of `packages` that is installed but fails to import
    (too old, broken), passes unchanged.
    """
    try:
        yield
    except ImportError as err:
        missing = (err.name or "").split(".")[0]
        if missing not in packages or importlib.util.find_spec(missing) is not None:
            raise  # another module, or the package is there but fails (too old, broken): its own error
        raise MissingExtraError(
            f"{feature} needs {missing}, which is not installed: pip install 'hf_autodrop[{extra}]' "
            f"(or install {', '.join(packages)} yourself).",
            name=missing,
        ) from err
