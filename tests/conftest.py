"""Test set-up shared by every test file.

Eight forced host CPU devices for the whole session (set before jax is imported), so
multi-device tests run in-process; single-device tests build a mesh of one device.
Real data is read from ../shared/data beside the checkout (or $ASTROTL_SHARED_DATA);
tests that need it are skipped when it is absent.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _shared_data():
  env = os.environ.get("ASTROTL_SHARED_DATA")
  candidates = [pathlib.Path(env)] if env else []
  candidates += [REPO.parent / "shared" / "data", pathlib.Path("/work/shared/data")]
  for c in candidates:
    if (c / "README.md").exists():
      return c
  return None


@pytest.fixture(scope="session")
def shared_data():
  path = _shared_data()
  if path is None:
    pytest.skip("../shared/data not found (set ASTROTL_SHARED_DATA)")
  return path
