"""Dataset sources: each returns whole splits as tensors (`SourceData`).

A source is registered in `DATASETS` and receives the data config as context; its
keyword-only parameters are the dataset-specific keys of the `data` section. One
module per kind: `digits` (ships with scikit-learn), `published` (MNIST, CIFAR, SVHN,
Pets via torchvision), `folders` (image folders and array files) and `frames` (frames
with context windows). The registry imports every module here the first time a dataset
is looked up, so a new source is one new module.
"""
