"""The project's scripts, loaded as modules (they have no .py suffix, or live in docker/)."""
import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(path, name):
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def entrypoint():
    return load(ROOT / "docker" / "entrypoint.py", "entrypoint")


@pytest.fixture
def prepare():
    return load(ROOT / "scripts" / "prepare-build", "prepare_build")


@pytest.fixture
def root():
    return ROOT
