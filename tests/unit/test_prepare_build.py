"""Unit tests of scripts/prepare-build's decisions (no Docker needed)."""
import platform
import sys


def test_wheelhouse_only_where_host_python_matches_image(prepare, monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(sys, "version_info", (3, 11, 7, "final", 0))
    assert prepare.host_matches_image()
    monkeypatch.setattr(sys, "version_info", (3, 12, 1, "final", 0))
    assert not prepare.host_matches_image()
    monkeypatch.setattr(sys, "version_info", (3, 11, 7, "final", 0))
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert not prepare.host_matches_image()


def test_current_wheelhouse_is_not_rebuilt(prepare, monkeypatch, tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("galaxy==26.1.1\n")
    monkeypatch.setattr(prepare, "REQUIREMENTS", [reqs])
    monkeypatch.setattr(prepare, "STAMP", tmp_path / "stamp")
    monkeypatch.setattr(prepare, "host_matches_image", lambda: True)
    calls = []
    monkeypatch.setattr(prepare.subprocess, "run", lambda *a, **k: calls.append(a))
    prepare.ensure_wheelhouse()
    assert len(calls) == 1  # first time: pip wheel
    prepare.ensure_wheelhouse()
    assert len(calls) == 1  # same requirements: nothing to do
    reqs.write_text("galaxy==26.1.2\n")
    prepare.ensure_wheelhouse()
    assert len(calls) == 2  # changed pins: rebuilt



def test_test_tool_shed_is_the_galaxy_release(prepare):
    """The suite's Tool Shed (tests/toolshed) and Galaxy are one release: the shed's package is
    installed on Galaxy's venv without its own dependencies."""
    def pin(path, name):
        return next(line.split("==")[1].strip() for line in path.read_text().splitlines()
                    if line.startswith(f"{name}=="))
    galaxy, shed = prepare.REQUIREMENTS
    assert pin(shed, "galaxy-tool-shed") == pin(galaxy, "galaxy")
