"""Unit tests of scripts/prepare-build's decisions (no Docker needed)."""
import platform
import sys
from pathlib import Path


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
    monkeypatch.setattr(prepare, "CONSTRAINTS", tmp_path / "constraints.txt")
    prepare.CONSTRAINTS.write_text("galaxy-app==26.1.1\n")
    monkeypatch.setattr(prepare, "WHEELS", tmp_path / "wheels")
    monkeypatch.setattr(prepare, "STAMP", tmp_path / "stamp")
    monkeypatch.setattr(prepare, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(prepare, "host_matches_image", lambda: True)
    calls = []
    monkeypatch.setattr(prepare.subprocess, "run", lambda *a, **k: calls.append(a))
    prepare.ensure_wheelhouse()
    assert len(calls) == 1  # first time: pip wheel
    prepare.ensure_wheelhouse()
    assert len(calls) == 1  # same requirements: nothing to do
    reqs.write_text("galaxy==26.1.2\n")
    prepare.ensure_wheelhouse()
    assert len(calls) == 2  # changed requirements: rebuilt
    prepare.CONSTRAINTS.write_text("galaxy-app==26.1.2\n")
    prepare.ensure_wheelhouse()
    assert len(calls) == 3  # changed pins: rebuilt


def test_another_clone_takes_the_wheelhouse_from_the_cache(prepare, monkeypatch, tmp_path):
    """The first clone's pip fills the user's cache; a second clone of the same pins gets the same
    wheels from it without pip, and nothing of older pins stays there."""
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("galaxy-app==26.1.1\n")
    monkeypatch.setattr(prepare, "REQUIREMENTS", [reqs])
    monkeypatch.setattr(prepare, "CONSTRAINTS", reqs)
    monkeypatch.setattr(prepare, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(prepare, "host_matches_image", lambda: True)
    (prepare.CACHE / "older-pins").mkdir(parents=True)
    pip_runs = []

    def pip_wheel(command, **kwargs):
        pip_runs.append(command)
        wheels = Path(command[command.index("--wheel-dir") + 1])
        (wheels / "galaxy_app-26.1.1-py3-none-any.whl").write_text("wheel")
    monkeypatch.setattr(prepare.subprocess, "run", pip_wheel)
    for clone in ("first", "second"):
        monkeypatch.setattr(prepare, "WHEELS", tmp_path / clone / "wheels")
        monkeypatch.setattr(prepare, "STAMP", tmp_path / clone / "wheels" / "stamp")
        prepare.WHEELS.mkdir(parents=True)
        prepare.ensure_wheelhouse()
        assert (prepare.WHEELS / "galaxy_app-26.1.1-py3-none-any.whl").read_text() == "wheel"
    assert len(pip_runs) == 1
    assert [d.name for d in prepare.CACHE.iterdir()] == [prepare.requirements_digest()]


def test_test_tool_shed_is_the_galaxy_release(prepare):
    """The suite's Tool Shed (tests/toolshed) and Galaxy are one release: the shed's package is
    installed on Galaxy's venv without its own dependencies."""
    def pin(path, name):
        return next(line.split("==")[1].strip() for line in path.read_text().splitlines()
                    if line.startswith(f"{name}=="))
    shed = prepare.REQUIREMENTS[1]
    assert pin(shed, "galaxy-tool-shed") == pin(prepare.CONSTRAINTS, "galaxy-app")


def test_stages_built_without_a_context_copy_nothing():
    """scripts/up builds the Dockerfile's stages up to the last of compose_stack.WHEEL_FREE_STAGES
    from the file alone (no context): a COPY or ADD there would fail that build."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import compose_stack
    dockerfile = (compose_stack.ROOT / "Dockerfile").read_text()
    head = dockerfile.split(f" AS {compose_stack.WHEEL_FREE_STAGES[-1]}\n")
    assert len(head) == 2, f"no stage {compose_stack.WHEEL_FREE_STAGES[-1]} in the Dockerfile"
    assert all(f" AS {stage}\n" in head[0] for stage in compose_stack.WHEEL_FREE_STAGES[:-1])
    last_stage = head[1].split("\nFROM ")[0]
    instructions = [line.split()[0] for line in (head[0] + last_stage).splitlines()
                    if line and not line.startswith((" ", "#"))]
    assert "COPY" not in instructions and "ADD" not in instructions
