"""Galaxy's shell (CLI) job runner, which submits the stack's Slurm jobs, with a finished job's
metadata set safely and before the job is finished.

The Slurm destinations set their outputs' metadata in a Celery worker, a warm Galaxy process
(config/tpv.yml: metadata_strategy directory_celery, embed_metadata_in_job false), instead of in
a Python started for it in every job. Two things Galaxy 26.1 leaves open are closed here:

- Order. Its ShellJobRunner puts two items on its work queue when a job ends, setting the
  metadata (a task it waits for) and finishing the job (which reads that metadata and moves the
  outputs), and its worker threads can take both at once: the finish then reads metadata not yet
  written and moves outputs the task is still reading. Here one item does both, in order, as
  Galaxy's own DRMAA and local runners do.
- Paths the job chose. A job's provided metadata (galaxy.json, legacy style) names extra files for
  the metadata step to read and, for some datatypes, rewrite, and Galaxy joins those names to the
  job's directory unchecked: `/srv/galaxy/config/...` or `../../..` reaches any file. In the job
  itself that ran as the job user, which can write nothing of Galaxy's; the worker runs as
  Galaxy. So a job whose galaxy.json names a file outside its own directory gets no metadata task:
  Galaxy's handler sets its outputs' metadata itself (retry_metadata_internally, Galaxy's default),
  from its own list of outputs, and the names the job gave are never opened.
"""
import logging
import os

from galaxy.jobs.runners.cli import ShellJobRunner
from galaxy.util import asbool

log = logging.getLogger(__name__)


class MetadataFirstShellJobRunner(ShellJobRunner):

    def handle_metadata_externally(self, ajs):
        """Queued by ShellJobRunner beside finish_job: done by finish_job itself (below)."""

    def finish_job(self, job_state):
        wrapper = job_state.job_wrapper
        if not asbool(wrapper.job_destination.params.get("embed_metadata_in_job", True)):
            outside = files_outside_the_job(wrapper)
            if outside:
                log.warning("(%s) the job's provided metadata names %s, outside its directory: "
                            "no metadata task, the handler sets its outputs' metadata",
                            wrapper.get_id_tag(), ", ".join(outside[:3]))
            else:
                self._handle_metadata_externally(wrapper, resolve_requirements=True)
        super().finish_job(job_state)


def files_outside_the_job(wrapper):
    """The file names in the job's provided metadata that the metadata step would open outside the
    job's own directory (`working/` for datasets, `outputs/` for their extra files); a provided
    metadata file that can't be read counts as one."""
    job = os.path.realpath(wrapper.working_directory)
    try:
        entries = list(wrapper.get_tool_provided_job_metadata().get_new_datasets_for_metadata_collection())
    except Exception as e:  # Galaxy's own finish reports a malformed file; the worker never sees it
        return [f"an unreadable provided metadata file ({e})"]
    outside = []
    for entry in entries:
        for key, folder in (("filename", "working"), ("extra_files", "outputs")):
            name = entry.get(key)
            if name is None:
                continue
            root = os.path.join(job, folder)
            path = os.path.realpath(os.path.join(root, str(name)))
            if not path.startswith(root + os.sep):
                outside.append(str(name))
    return outside
