#!/usr/bin/env python
"""WRN-28-10 on CIFAR-10 with AutoDrop: the second row of the paper's Table 1.

Setup (the defaults): `wrn28_10_cifar` (36,479,194 parameters, dropout 0), `uoft-cs/cifar10`,
pad-4 random crop + flip, SGD lr 0.1, momentum 0.9 (no Nesterov), weight decay 5e-4 on every
parameter, batch 128, 200 epochs. AutoDrop: rho 0.2, theta 0.01 -> 1.0 degrees, n_d 20 epochs, lr
floor 1e-4. Baseline (Zagoruyko & Komodakis): lr x 0.2 after epochs 60, 120 and 160.

Launch (one GPU; seeds 0-3 give Table 1's four runs):
    python recipes/cifar10_wrn28_10.py --seed 0                            # AutoDrop, rho 0.2
    python recipes/cifar10_wrn28_10.py --seed 0 --schedule multistep       # the baseline
    accelerate launch recipes/cifar10_wrn28_10.py --seed 0

Expected final test error (paper, mean +- std over 4 seeds): baseline 3.77 +- 0.05, AutoDrop rho 0.1
3.73 +- 0.26, rho 0.2 3.73 +- 0.10, rho 0.5 4.29 +- 1.13. Time (estimate, not yet measured): about
3.5 h per run on one A100-class GPU with bf16 and channels_last; see recipes/README.md.
"""

from image_classification import CIFAR_PROTOCOL, DATA_SETS, Recipe, main

RECIPE = Recipe(
    **DATA_SETS["cifar10"],
    **CIFAR_PROTOCOL,
    name="cifar10_wrn28_10",
    title="WRN-28-10 on CIFAR-10",
    model_name="wrn28_10_cifar",
    learning_rate=0.1,
    nesterov=False,
    paper={
        "multistep-0.2": (3.77, 0.05),
        "autodrop-0.1": (3.73, 0.26),
        "autodrop-0.2": (3.73, 0.10),
        "autodrop-0.5": (4.29, 1.13),
    },
    expected_hours="3.5 (estimate)",
)

if __name__ == "__main__":
    main(RECIPE)
