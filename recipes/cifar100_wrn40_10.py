#!/usr/bin/env python
"""WRN-40-10 on CIFAR-100 with AutoDrop: the fourth row of the paper's Table 1.

Setup (the defaults): `wrn40_10_cifar` (55,899,444 parameters, dropout 0), `uoft-cs/cifar100` with
the 100 `fine_label` classes, pad-4 random crop + flip, SGD lr 0.1, momentum 0.9 (no Nesterov),
weight decay 5e-4 on every parameter, batch 128, 200 epochs. AutoDrop: rho 0.2, theta 0.01 -> 1.0
degrees, n_d 20 epochs, lr floor 1e-4. Baseline (Zagoruyko & Komodakis): lr x 0.2 after epochs 60,
120 and 160.

Launch (one GPU; seeds 0-3 give Table 1's four runs):
    python recipes/cifar100_wrn40_10.py --seed 0                           # AutoDrop, rho 0.2
    python recipes/cifar100_wrn40_10.py --seed 0 --schedule multistep      # the baseline
    accelerate launch recipes/cifar100_wrn40_10.py --seed 0

Expected final test error (paper, mean +- std over 4 seeds): baseline 19.16 +- 0.11, AutoDrop rho 0.1
18.25 +- 0.33, rho 0.2 18.17 +- 0.25, rho 0.5 23.15 +- 3.43. Time (estimate, not yet measured): about
5.5 h per run on one A100-class GPU with bf16 and channels_last; see recipes/README.md.
"""

from image_classification import CIFAR_PROTOCOL, DATA_SETS, Recipe, main

RECIPE = Recipe(
    **DATA_SETS["cifar100"],
    **CIFAR_PROTOCOL,
    name="cifar100_wrn40_10",
    title="WRN-40-10 on CIFAR-100",
    model_name="wrn40_10_cifar",
    learning_rate=0.1,
    nesterov=False,
    paper={
        "multistep-0.2": (19.16, 0.11),
        "autodrop-0.1": (18.25, 0.33),
        "autodrop-0.2": (18.17, 0.25),
        "autodrop-0.5": (23.15, 3.43),
    },
    expected_hours="5.5 (estimate)",
)

if __name__ == "__main__":
    main(RECIPE)
