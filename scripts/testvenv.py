"""The virtualenv the test suite and the benchmark run in (.venv-test: pytest, BioBlend, ...),
made once and remade only when requirements-test.txt changes."""
import hashlib
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-test"
REQUIREMENTS = ROOT / "requirements-test.txt"


def ensure_venv():
    """The venv's python, installing the test requirements first if they changed."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    print("[venv] installing the test requirements into .venv-test", file=sys.stderr)
    if not python.exists():
        venv.create(VENV, with_pip=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
                   check=True)
    stamp.write_text(digest)
    return python
