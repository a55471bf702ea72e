#!/usr/bin/env python
"""ResNet-18 on CIFAR-10 with AutoDrop: the first row of the paper's Table 1.

Setup (the defaults): `resnet18_cifar` (11,173,962 parameters), `uoft-cs/cifar10` (train 50,000 /
test 10,000), pad-4 random crop + flip, SGD lr 0.05, Nesterov momentum 0.9, weight decay 5e-4 on
every parameter, batch 128, 200 epochs. AutoDrop: rho 0.2, theta 0.01 -> 1.0 degrees, n_d 20 epochs,
lr floor 1e-4. Baseline: lr x 0.2 after epochs 60, 120 and 160.

Launch (one GPU; seeds 0-3 give Table 1's four runs):
    python recipes/cifar10_resnet18.py --seed 0                            # AutoDrop, rho 0.2
    python recipes/cifar10_resnet18.py --seed 0 --drop_factor 0.5          # AutoDrop, rho 0.5
    python recipes/cifar10_resnet18.py --seed 0 --schedule multistep       # the baseline
    accelerate launch recipes/cifar10_resnet18.py --seed 0                 # through accelerate
    python recipes/cifar10_resnet18.py --seed 0 --push_to_hub --hub_model_id <you>/resnet18-cifar10-autodrop

Expected final test error (paper, mean +- std over 4 seeds): baseline 4.87 +- 0.09, AutoDrop rho 0.1
5.07 +- 0.47, rho 0.2 4.61 +- 0.17, rho 0.5 4.71 +- 0.11. Time (estimate, not yet measured): about 0.5 h
per run on one A100-class GPU with bf16 and channels_last; see recipes/README.md.
"""

from image_classification import CIFAR_PROTOCOL, DATA_SETS, Recipe, main

RECIPE = Recipe(
    **DATA_SETS["cifar10"],
    **CIFAR_PROTOCOL,
    name="cifar10_resnet18",
    title="ResNet-18 on CIFAR-10",
    model_name="resnet18_cifar",
    learning_rate=0.05,
    nesterov=True,
    paper={
        "multistep-0.2": (4.87, 0.085),
        "autodrop-0.1": (5.07, 0.465),
        "autodrop-0.2": (4.61, 0.173),
        "autodrop-0.5": (4.71, 0.111),
    },
    expected_hours="0.5 (estimate)",
)

if __name__ == "__main__":
    main(RECIPE)
