"""The project's scripts, loaded as modules (they have no .py suffix, or live in docker/)."""
import importlib.machinery
import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(path, name):
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "docker"))  # the entrypoint's own modules
    return load(ROOT / "docker" / "settings.py", "settings")


@pytest.fixture
def entrypoint(settings):
    return load(ROOT / "docker" / "entrypoint.py", "entrypoint")


@pytest.fixture
def cluster(settings):
    return load(ROOT / "docker" / "cluster.py", "cluster")


@pytest.fixture
def nginx_entrypoint():
    return load(ROOT / "nginx" / "entrypoint.py", "nginx_entrypoint")


@pytest.fixture
def prepare():
    return load(ROOT / "scripts" / "prepare-build", "prepare_build")


@pytest.fixture
def root():
    return ROOT


@pytest.fixture
def job_directory(monkeypatch):
    module = load(ROOT / "docker" / "job_directory.py", "job_directory")
    # The users of the images (galaxy, galaxy-job), played by whoever runs the test.
    me = SimpleNamespace(pw_uid=os.getuid(), pw_gid=os.getgid(), gr_gid=os.getgid())
    monkeypatch.setattr(module.pwd, "getpwnam", lambda name: me)
    monkeypatch.setattr(module.grp, "getgrnam", lambda name: me)
    return module
