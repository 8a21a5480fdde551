"""Builds variable_stars without the `tfds` command, which needs TensorFlow.

  python -m astrotl.datasets.variable_stars --config=eros1 --manual_dir=DIR --data_dir=OUT

DIR is a folder laid out like the shared data's `lightcurves/` (see the builder's
MANUAL_DOWNLOAD_INSTRUCTIONS).
"""

import argparse
import logging

from astrotl.datasets.variable_stars.variable_stars_dataset_builder import CONFIGS, build


def main(argv=None):
  parser = argparse.ArgumentParser(description="Build the variable_stars TFDS dataset.")
  parser.add_argument("--config", default="eros1", choices=[c.name for c in CONFIGS])
  parser.add_argument("--manual_dir", required=True, help="the lightcurves folder")
  parser.add_argument("--data_dir", required=True, help="where the dataset is written")
  args = parser.parse_args(argv)
  builder = build(args.config, args.manual_dir, args.data_dir)
  md = builder.info.metadata
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  print(f"{builder.data_dir}: {splits}; per class {md.get('counts')}; feature reasons "
        f"{md.get('reason_counts')}; unreadable entries skipped: {md.get('unreadable', 0)}")
  return builder


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main()
