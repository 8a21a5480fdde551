"""Builds lamost_lrs without the `tfds` command, which needs TensorFlow.

  python -m astrotl.datasets.lamost_lrs --config=mirror --manual_dir=DIR --data_dir=OUT \\
      [--beam_options=runner=DirectRunner,direct_num_workers=16,direct_running_mode=multi_processing]
"""

import argparse
import logging

import tensorflow_datasets as tfds

from astrotl.datasets.lamost_lrs.lamost_lrs_dataset_builder import Builder


def main(argv=None):
  parser = argparse.ArgumentParser(description="Build the lamost_lrs TFDS dataset.")
  parser.add_argument("--config", default="sample", choices=["sample", "mirror", "simulated"])
  parser.add_argument("--data_dir", required=True, help="where the dataset is written")
  parser.add_argument("--manual_dir", help="LAMOST mirror folder (config mirror)")
  parser.add_argument("--beam_options", help="comma-separated Beam pipeline options; "
                      "builds with Apache Beam when given")
  args = parser.parse_args(argv)
  if args.config == "mirror" and not args.manual_dir:
    parser.error("--manual_dir is required for config mirror")
  beam_options = None
  if args.beam_options:
    from apache_beam.options.pipeline_options import PipelineOptions

    beam_options = PipelineOptions([f"--{o}" for o in args.beam_options.split(",")])
  builder = Builder(config=args.config, data_dir=args.data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=args.manual_dir, beam_options=beam_options))
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  print(f"{builder.data_dir}: {splits}, unreadable files skipped: "
        f"{builder.info.metadata.get('unreadable_files', 0)}")
  return builder


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main()
