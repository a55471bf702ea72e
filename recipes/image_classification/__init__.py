"""The shared image-classification training behind every recipe: timm model + `datasets` data + `Trainer` + AutoDrop.

Each recipe file (`recipes/cifar10_resnet18.py`, ...) holds one `Recipe` (the paper's setup for one
row of Table 1) and calls `main(recipe)`. The modules, one concern each:

- `recipe.py`: `Recipe`, and what each data set contributes (`DATA_SETS`, `CIFAR_PROTOCOL`);
- `args.py`: the command line, with the recipe's values as its defaults (applied there, once);
- `data.py`: `datasets` loading and the lazy uint8 transforms;
- `model.py`: the timm model behind the `Trainer`'s interface;
- `trainer.py`: the `Trainer` with the paper's weight decay, the baseline schedule, the metrics;
- `results.py`: `results.json`'s fields from the log history, and the training curve;
- `publish.py` (+ `hub_code/`; the card template is `model_cards/model_card.md` at the repository's
  root): the timm folder, its Hub custom code, the model card and the Hub upload;
- `train.py`: `run`/`main`, which puts them together.
"""

import importlib.util

# The modules import these where they use them; a missing one is named here, before any work starts.
_NEEDED = ("transformers", "accelerate", "timm", "torchvision", "datasets", "numpy")
_MISSING = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ModuleNotFoundError(
        f"The recipes cannot run without {', '.join(_MISSING)} (not installed): pip install "
        f"'hf_autodrop[recipes]' (or install {', '.join(_NEEDED)} yourself).",
        name=_MISSING[0],
    )

from .args import parse_args  # noqa: E402
from .recipe import CIFAR_PROTOCOL, DATA_SETS, Recipe  # noqa: E402
from .train import main, run  # noqa: E402

__all__ = ["CIFAR_PROTOCOL", "DATA_SETS", "Recipe", "main", "parse_args", "run"]
