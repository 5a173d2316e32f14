"""Shared pytest set-up: quiet TensorFlow, the repo root and tests/helpers (toy models and data
shared by several test folders) on sys.path, the fixtures folder."""
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parents[1]
HELPERS = ROOT / "tests" / "helpers"
for path in (ROOT, HELPERS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import pytest  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return ROOT
