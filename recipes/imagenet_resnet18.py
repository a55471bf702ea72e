#!/usr/bin/env python
"""ResNet-18 on ImageNet-1k with AutoDrop: the last row of the paper's Table 1.

Setup (the defaults): timm's `resnet18` (11,689,512 parameters, the He et al. 2016 architecture,
last BN of each block initialised to one), `ILSVRC/imagenet-1k` (gated: accept its terms on the Hub
and `huggingface-cli login` first; train 1,281,167 / validation 50,000 images), random-resized crop
224 + flip for training, resize 256 + centre crop 224 for the test, SGD lr 0.1, momentum 0.9,
weight decay 1e-4 on every parameter, total batch 256, 105 epochs. AutoDrop: rho 0.1, theta
0.01 -> 0.1 -> 1.0 degrees, n_d 20 epochs, lr floor 1e-4. Baseline: lr x 0.1 every 30 epochs.

Launch (8 GPUs, 32 images each = the paper's 256):
    accelerate launch --multi_gpu --num_processes 8 recipes/imagenet_resnet18.py --per_device_train_batch_size 32
    accelerate launch --multi_gpu --num_processes 8 recipes/imagenet_resnet18.py --per_device_train_batch_size 32 \
        --schedule multistep                                                   # the baseline
    python recipes/imagenet_resnet18.py --dataloader_num_workers 16            # one GPU, batch 256
    ... --streaming                       # read the Hub dataset as a stream instead of downloading it first
    ... --data_dir /data/imagenet-1k      # a local copy (save_to_disk folder or the Hub's parquet layout)

Expected final top-1 test error (paper, one run each): baseline 29.93, AutoDrop rho 0.1 29.80. Time
(estimate, not yet measured): about 4-6 h on 8 A100-class GPUs, bound by JPEG decoding on the CPUs
(12+ cores per GPU); see recipes/README.md.
"""

from image_classification import DATA_SETS, Recipe, main

RECIPE = Recipe(
    **DATA_SETS["imagenet"],
    name="imagenet_resnet18",
    title="ResNet-18 on ImageNet-1k",
    model_name="resnet18",
    epochs=105,
    weight_decay=1e-4,
    batch_size=256,
    drop_factor=0.1,
    milestones=(30, 60, 90),
    model_kwargs={"zero_init_last": False},
    learning_rate=0.1,
    nesterov=False,
    paper={"multistep-0.1": (29.93, None), "autodrop-0.1": (29.80, None)},
    expected_hours="4-6 (estimate, 8 GPUs)",
)

if __name__ == "__main__":
    main(RECIPE)
