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


@pytest.fixture
def schema(settings, tmp_path, monkeypatch):
    """docker/schema.py with a Galaxy of three migrations (a merge among them) in tmp_path."""
    module = load(ROOT / "docker" / "schema.py", "schema")
    gxy, tsi = tmp_path / "versions_gxy", tmp_path / "versions_tsi"
    gxy.mkdir()
    tsi.mkdir()
    for name, text in {"a1_branch.py": 'revision = "a1"\ndown_revision = None\n',
                       "b2_side.py": 'revision = "b2"\ndown_revision = "a1"\n',
                       "c3_other.py": 'revision = "c3"\ndown_revision = "a1"\n',
                       "d4_merge.py": 'revision = "d4"\ndown_revision = ("b2", "c3")\n'}.items():
        (gxy / name).write_text(f'"""A migration."""\n{text}branch_labels = None\n')
    (tsi / "t9_tsi.py").write_text('revision = "t9"\ndown_revision = None\n')
    monkeypatch.setattr(module, "VERSIONS", str(gxy))
    monkeypatch.setattr(module.time, "sleep", lambda seconds: None)
    return module


@pytest.fixture
def health(settings):
    return load(ROOT / "docker" / "health.py", "health")


@pytest.fixture(autouse=True)
def temporary_files_in_the_test_folder(tmp_path, monkeypatch):
    """The entrypoint writes its config files with tempfile (in a container's /tmp): here, into
    the test's own folder, which pytest removes, not the host's /tmp."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
