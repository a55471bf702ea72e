"""pytest plugin for `make test-oldest`: the callback and Trainer tests against the oldest transformers and
accelerate that pyproject.toml allows.

The tests are written against the newest transformers; two things of their harness (not of AutoDrop) differ
in older releases, and this plugin bridges exactly those, nothing else:

- transformers 5 reads TensorBoard's folder from the `TENSORBOARD_LOGGING_DIR` environment variable, which
  the tests set; transformers 4 reads `TrainingArguments.logging_dir`. Under transformers 4 the plugin copies
  the variable into `logging_dir`, so the real TensorBoard callback writes where the tests read.
- a test parametrized by a `schedule` that the installed transformers does not have (`"greedy"` came later)
  cannot run there, nor a test whose fake replaces a name the installed transformers lacks (the faked Hub
  upload replaces `transformers.trainer.hf_api`); they are deselected, and the run says which and why.
"""

import importlib
import os

_DESELECTED: list[str] = []

# test -> (module, attribute) its fake replaces: deselected only where that attribute does not exist.
_FAKES = {
    "test_a_checkpoint_pushed_to_the_hub_resumes_exactly": ("transformers.trainer", "hf_api"),
}


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def pytest_configure(config):
    if _transformers_major() >= 5:
        return
    from transformers import TrainingArguments

    original = TrainingArguments.__post_init__

    def post_init(self):
        original(self)
        folder = os.environ.get("TENSORBOARD_LOGGING_DIR")
        if folder:
            self.logging_dir = folder

    TrainingArguments.__post_init__ = post_init


def pytest_collection_modifyitems(config, items):
    from transformers import SchedulerType

    known = {s.value for s in SchedulerType}
    keep, drop = [], []
    for item in items:
        name = getattr(item, "originalname", None)
        schedule = getattr(getattr(item, "callspec", None), "params", {}).get("schedule")
        if isinstance(schedule, str) and schedule not in known:
            drop.append(item)
            _DESELECTED.append(f"{item.nodeid} (no schedule {schedule!r} in this transformers)")
        elif name in _FAKES and not hasattr(importlib.import_module(_FAKES[name][0]), _FAKES[name][1]):
            drop.append(item)
            _DESELECTED.append(f"{item.nodeid} (its fake replaces {'.'.join(_FAKES[name])}, absent here)")
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter):
    import accelerate
    import transformers

    terminalreporter.write_line(
        f"oldest versions: transformers {transformers.__version__}, accelerate {accelerate.__version__}"
    )
    for nodeid in _DESELECTED:
        terminalreporter.write_line(f"deselected: {nodeid}")
