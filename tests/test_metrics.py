"""Metrics that the experiments report."""

from astrotl import metrics


def test_first_reaching_finds_the_first_record_at_or_above_the_target():
  history = [{"step": 10, "seconds": 1.0, "loss": 2.0},  # a training-only record
             {"step": 20, "seconds": 2.0, "val_accuracy": 0.80},
             {"step": 30, "seconds": 3.0, "val_accuracy": 0.95},
             {"step": 40, "seconds": 4.0, "val_accuracy": 0.97}]
  assert metrics.first_reaching(history, 0.95) == (30, 3.0)
  assert metrics.first_reaching(history, 0.5) == (20, 2.0)
  assert metrics.first_reaching(history, 0.99) == (None, None)
  assert metrics.first_reaching(history, 1.5, key="loss") == (10, 1.0)
