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
3.73 +- 0.26, rho 0.2 3.73 +- 0.10, rho 0.5 4.29 +- 1.13. Time: about 5-8 h per run on one recent GPU
(bf16, channels_last); see recipes/README.md.
"""

from image_classification import Recipe, main

from hf_autodrop.models import CIFAR10_MEAN, CIFAR10_STD

RECIPE = Recipe(
    name="cifar10_wrn28_10",
    title="WRN-28-10 on CIFAR-10",
    model_name="wrn28_10_cifar",
    dataset_name="uoft-cs/cifar10",
    dataset_pretty="CIFAR-10",
    kind="cifar",
    num_classes=10,
    image_column="img",
    label_column="label",
    train_split="train",
    eval_split="test",
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    epochs=200,
    learning_rate=0.1,
    weight_decay=5e-4,
    nesterov=False,
    batch_size=128,
    drop_factor=0.2,
    milestones=(60, 120, 160),
    paper={"multistep-0.2": (3.77, 0.05), "autodrop-0.1": (3.73, 0.26), "autodrop-0.2": (3.73, 0.10),
           "autodrop-0.5": (4.29, 1.13)},
    expected_hours="5-8",
)

if __name__ == "__main__":
    main(RECIPE)
