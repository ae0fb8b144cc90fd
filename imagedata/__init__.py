"""Datasets and their readers: every `--data` kind (`imagedata.kinds`, the registry), the image folders,
CIFAR's pickled batches, scikit-learn's digits and synthetic images.

Every dataset yields `(uint8 CHW tensor, int label)`. Validation images go through
`models.eval_resize_crop`, the same code the export parity check, the server and the client use.
"""
