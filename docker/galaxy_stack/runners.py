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

And what a database outage (PostgreSQL restarting) did to jobs: Galaxy fails a job whose
preparation, submission or finish meets the database gone ("Failure preparing job", "Unhandled
exception calling queue_job", "Unable to finish job"), though the job is not at fault. Others were
left `queued` for ever: one submitted to Slurm whose id could not be saved, one handed to the
runner as the database went, one whose finish lost it (failing it needs the database too), and any
a worker thread took from the runner's queue while it was away (Galaxy's worker looks the job up
outside its try block: the error ended the thread, and the job with it). Here:
- a job is submitted, finished or failed only while the database answers, else 10 s later;
- a job that loses it while handed over or prepared goes back to its handler as `new` (its
  handler dispatches it afresh);
- the Slurm id of a job just submitted is saved once the database is back (never submitted twice);
- a finish that loses it is done again from the start, as Galaxy finishes a job again after a
  restart (outputs it had moved already are found where they went, unless empty: that job ends in
  error; the Slurm job's own stdout and exit code files are kept until a finish is through);
- a job is finished once even if Galaxy's monitor hands it over twice (it does when the database
  goes away half-way through its list of watched jobs);
- a worker thread outlives the database, in this runner and in Galaxy's local runner (uploads);
- a rollback that meets the database gone doesn't stop the job being put back.
"""
import logging
import os
import sys
import threading
import time

from sqlalchemy import text

from galaxy.jobs.runners.cli import ShellJobRunner
from galaxy.jobs.runners.local import LocalJobRunner
from galaxy.util import asbool
from galaxy_stack.database import unreachable

log = logging.getLogger(__name__)
# How long a job waits for the database to come back before its runner tries it again.
RETRY_AFTER = 10


class WorkersOutliveTheDatabase:
    """For any of Galaxy's runners: its worker threads survive the database going away."""

    def _ensure_db_session(self, arg):
        """Galaxy's, called by its worker thread outside any try: the database unreachable there
        no longer ends the thread (the method the work item calls meets the error instead: the
        shell runner's puts the item back for later; the local runner's, Galaxy's own, can't fail
        the job without the database either, and the job waits for its handler's next start)."""
        try:
            super()._ensure_db_session(arg)
        except Exception as e:
            self.roll_back()
            log.warning("(%s) the job's record not loaded (%s)", getattr(arg, "job_wrapper", arg).job_id,
                        first_line(e))

    def roll_back(self):
        """The session's transaction rolled back, never raising: a rollback can itself meet the
        database gone ("the database system is shutting down"), and whatever called it must
        still put its job back. The session's next user rolls back again (SQLAlchemy asks it to)."""
        try:
            self.sa_session.rollback()
        except Exception as e:
            log.warning("rollback failed, the database is unreachable (%s)", first_line(e))


class LocalJobRunnerOutlivingTheDatabase(WorkersOutliveTheDatabase, LocalJobRunner):
    """Galaxy's local runner (uploads, in the handler) whose worker threads survive an outage."""


class MetadataFirstShellJobRunner(WorkersOutliveTheDatabase, ShellJobRunner):

    def __init__(self, *args, **kwargs):
        self.finishing = threading.Lock()  # taking a job to finish, once
        super().__init__(*args, **kwargs)

    def queue_job(self, job_wrapper):
        if self.later_unless_database_answers(self.queue_job, job_wrapper):
            return
        submitted = []
        set_external_id = job_wrapper.set_external_id

        def set_external_id_once_saved(external_id, *args, **kwargs):
            submitted.append(external_id)  # on Slurm now: never submitted again
            self.until_saved(lambda: set_external_id(external_id, *args, **kwargs),
                             f"({job_wrapper.job_id}) Slurm job {external_id}'s id")
        job_wrapper.set_external_id = set_external_id_once_saved
        try:
            super().queue_job(job_wrapper)
        except Exception as e:
            if submitted or not unreachable(e):
                raise
            self.roll_back()
            self.back_to_the_handler(job_wrapper.job_id,
                                     f"the database went away before it was submitted: {e}")
        finally:
            del job_wrapper.set_external_id  # Galaxy's own again

    def until_saved(self, save, what, patience=600):
        """save(), again every 5 s while the database is unreachable (`patience` seconds)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return save()
            except Exception as e:
                if not unreachable(e) or time.monotonic() > deadline:
                    raise
                self.roll_back()
                log.warning("%s not saved, the database is unreachable (%s): again in 5 s", what,
                            first_line(e))
                time.sleep(5)

    def put(self, job_wrapper):
        """Galaxy's (the handler hands a job to this runner), except that losing the database
        half-way doesn't fail the job: it goes back to its handler."""
        lost = self.unless_the_database_was_lost(job_wrapper, super().put, job_wrapper)
        if lost:
            self.back_to_the_handler(job_wrapper.job_id,
                                     f"the database went away while it was queued: {lost}")

    def prepare_job(self, job_wrapper, *args, **kwargs):
        """Galaxy's, except that losing the database half-way doesn't fail the job: it goes back
        to its handler, and is prepared again from the start."""
        ready = []
        lost = self.unless_the_database_was_lost(
            job_wrapper, lambda: ready.append(super(MetadataFirstShellJobRunner, self).prepare_job(
                job_wrapper, *args, **kwargs)))
        if lost:
            self.back_to_the_handler(job_wrapper.job_id,
                                     f"the database went away while it was prepared: {lost}")
            return False
        return ready[0]

    def unless_the_database_was_lost(self, job_wrapper, call, *args):
        """call(*args) with the job's fail() ignoring a failure that is the database's: what
        was lost, caught by Galaxy (fail() called) or raised (the session rolled back), or None."""
        lost = []
        fail = job_wrapper.fail

        def fail_unless_the_database_was_lost(*a, **kw):
            if unreachable(sys.exc_info()[1]):
                lost.append(sys.exc_info()[1])
                return None
            return fail(*a, **kw)
        job_wrapper.fail = fail_unless_the_database_was_lost
        try:
            call(*args)
        except Exception as e:
            if not unreachable(e):
                raise
            lost.append(e)
        finally:
            del job_wrapper.fail  # Galaxy's own again
        if not lost:
            return None
        self.roll_back()
        return lost[0]

    def later_unless_database_answers(self, method, arg):
        """True (and `method(arg)` put back on the work queue in RETRY_AFTER seconds) if the
        database doesn't answer now."""
        try:
            self.sa_session.execute(text("SELECT 1"))
            return False
        except Exception as e:
            self.roll_back()
            self.later(method, arg, f"the database does not answer: {e}")
            return True

    def back_to_the_handler(self, job_id, why):
        """The job `new` again once the database is back: its handler dispatches it afresh, as
        any new job (its wrapper holds objects of a session that is gone)."""
        log.warning("(%s) %s; handing it back to its handler in %d s", job_id, str(why).strip(),
                    RETRY_AFTER)

        def new_again():
            def update():
                with self.app.model.engine.begin() as conn:
                    conn.execute(text("UPDATE job SET state = 'new' WHERE id = :id AND state = 'queued'"),
                                 {"id": job_id})
            self.until_saved(update, f"({job_id}) the job's state `new`")
        timer = threading.Timer(RETRY_AFTER, new_again)
        timer.daemon = True
        timer.start()

    def later(self, method, arg, why):
        wrapper = getattr(arg, "job_wrapper", arg)
        log.warning("(%s) %s; trying %s again in %d s", wrapper.job_id, str(why).strip(),
                    method.__name__, RETRY_AFTER)
        timer = threading.Timer(RETRY_AFTER, self.work_queue.put, ((method, arg),))
        timer.daemon = True
        timer.start()

    def fail_job(self, job_state, *args, **kwargs):
        """Galaxy's, once the database answers (else it failed itself and the job stayed as it
        was)."""
        if self.later_unless_database_answers(self.fail_job, job_state):
            return
        super().fail_job(job_state, *args, **kwargs)

    def handle_metadata_externally(self, ajs):
        """Queued by ShellJobRunner beside finish_job: done by finish_job itself (below)."""

    def finish_job(self, job_state):
        with self.finishing:
            if getattr(job_state, "finish_taken", False):
                log.debug("(%s) already being finished", job_state.job_wrapper.job_id)
                return
            job_state.finish_taken = True
        self.finish_until_done(job_state)

    def finish_until_done(self, job_state):
        """The job finished, again from the start (RETRY_AFTER seconds later) while the database is
        unreachable or is lost on the way."""
        if self.later_unless_database_answers(self.finish_until_done, job_state):
            return
        cleanup, asked = job_state.cleanup, []
        job_state.cleanup = lambda: asked.append(True)  # the Slurm job's files: needed by a retry
        try:
            lost = self.unless_the_database_was_lost(job_state.job_wrapper, self.finish_once, job_state)
        finally:
            del job_state.cleanup  # the class's own again
        if lost:
            self.later(self.finish_until_done, job_state,
                       f"the database went away while it was finished: {lost}")
        elif asked:
            try:
                cleanup()
            except Exception as e:
                # Galaxy's cleanup names the job in its log through the database: an outage now
                # raised there would have Galaxy fail the job it has just finished.
                log.warning("(%s) the Slurm job's files not all removed: %s", job_state.job_wrapper.job_id,
                            first_line(e))

    def finish_once(self, job_state):
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


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
