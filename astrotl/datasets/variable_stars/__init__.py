"""TFDS builder `variable_stars` (configs eros1, eros1_sample, catalina, asas, macho_rrc);
importing registers it."""

from astrotl.datasets.variable_stars.variable_stars_dataset_builder import (
    CONFIGS, EROS1_CLASSES, Builder, Config, assign_splits, build, examples, stratified_split)
