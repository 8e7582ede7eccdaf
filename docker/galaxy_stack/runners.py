"""Galaxy's shell (CLI) job runner, which submits the stack's Slurm jobs, with a finished job's
metadata set before the job is finished.

The Slurm destinations set their outputs' metadata in a Celery worker, a warm Galaxy process
(config/tpv.yml: metadata_strategy directory_celery, embed_metadata_in_job false), instead of in
a Python started for it in every job. For that, Galaxy 26.1's ShellJobRunner puts two items on its
work queue when a job ends, setting the metadata (a task it waits for) and finishing the job
(which reads that metadata and moves the outputs), and its worker threads can take both at once:
the finish then reads metadata not yet written and moves outputs the task is still reading.
Here one item does both, in order, as Galaxy's own DRMAA and local runners do.
"""
from galaxy.jobs.runners.cli import ShellJobRunner
from galaxy.util import asbool


class MetadataFirstShellJobRunner(ShellJobRunner):

    def handle_metadata_externally(self, ajs):
        """Queued by ShellJobRunner beside finish_job: done by finish_job itself (below)."""

    def finish_job(self, job_state):
        params = job_state.job_wrapper.job_destination.params
        if not asbool(params.get("embed_metadata_in_job", True)):
            self._handle_metadata_externally(job_state.job_wrapper, resolve_requirements=True)
        super().finish_job(job_state)
