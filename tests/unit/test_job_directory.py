"""The compute nodes' Prolog and Epilog around a job's directory (docker/job_directory.py)."""
import os
import stat


def a_job_left(path):
    """A job directory as a job might leave it: outputs, links to secrets, a fifo."""
    (path / "outputs").mkdir()
    (path / "outputs" / "dataset.dat").write_text("result\n")
    (path / "outputs" / "dataset.dat").chmod(0o664)
    (path / "outputs" / "tool_stdout").symlink_to("/var/lib/galaxy-secrets/admin_api_key")
    (path / "tool_stderr").symlink_to("/proc/self/environ")
    (path / "outputs" / "linked_dir").symlink_to("/etc")
    os.mkfifo(path / "fifo")
    (path / "outputs").chmod(0o2777)


def test_epilog_gives_galaxy_a_directory_with_empty_files_for_links(job_directory, tmp_path):
    a_job_left(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        job_directory.take_back(fd)
    finally:
        os.close(fd)
    left = {str(p.relative_to(tmp_path)): p.read_text() if p.is_file() else "dir"
            for p in tmp_path.rglob("*")}
    assert left == {"outputs": "dir", "outputs/dataset.dat": "result\n", "outputs/tool_stdout": "",
                    "outputs/linked_dir": "", "tool_stderr": "", "fifo": ""}
    assert not [p for p in tmp_path.rglob("*") if p.is_symlink()]
    assert stat.S_IMODE((tmp_path / "outputs").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "outputs" / "dataset.dat").stat().st_mode) == 0o644


def test_prolog_opens_directories_and_files_to_the_group(job_directory, tmp_path):
    (tmp_path / "working").mkdir(mode=0o755)
    (tmp_path / "tool_script.sh").write_text("true\n")
    (tmp_path / "tool_script.sh").chmod(0o644)
    (tmp_path / "elsewhere").symlink_to("/etc/passwd")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        job_directory.open_for_job(fd)
    finally:
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "working").stat().st_mode) == 0o2775
    assert stat.S_IMODE((tmp_path / "tool_script.sh").stat().st_mode) == 0o664
    assert stat.S_IMODE(os.stat("/etc/passwd").st_mode) == 0o644  # a link is never followed
