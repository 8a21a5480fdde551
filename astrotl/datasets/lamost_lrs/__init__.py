"""TFDS builder `lamost_lrs` (configs `sample`, `mirror`); importing registers it."""

from astrotl.datasets.lamost_lrs.lamost_lrs_dataset_builder import (CLASSES, Builder, example,
                                                                    split_of)
