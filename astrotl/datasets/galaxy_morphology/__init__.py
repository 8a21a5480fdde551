"""TFDS builder `galaxy_morphology` (one config per survey set); importing registers it."""

from astrotl.datasets.galaxy_morphology.galaxy_morphology_dataset_builder import (SOURCES, Builder,
                                                                                  examples,
                                                                                  split_of)
