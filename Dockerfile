# klockproxy container image: `klockproxy gateway` (shared bastion gateway) and
# `klockproxy webhook` (validating admission webhook); see deploy/README.md.
#
#   docker build -t klockproxy:0.1.0 .
#
# Built to run as a non-root numeric user on a read-only root filesystem: nothing is written
# outside HOME (/tmp) and the state directory, both of which the manifests mount as emptyDir
# volumes. The base image is pinned to a Python minor version and Debian release, never
# `latest`; pin it by digest (python:3.11-slim-bookworm@sha256:...) for reproducible builds.
FROM python:3.11-slim-bookworm

# HOME: anything that writes under ~ (mitmproxy's default confdir, the kubernetes client's
# caches) lands in /tmp, a writable emptyDir in the pod. No .pyc files are written at run time
# (the root filesystem is read-only): they are compiled below, also for `python -O`, which the
# serving subcommands re-run themselves under.
ENV HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /build
COPY pyproject.toml README.md ./
COPY klockproxy ./klockproxy
# The package alone, without the test extra (no kubectl, pytest or linters in the image).
RUN pip install --no-compile . \
    && python -m compileall -q -o 0 -o 1 \
       "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && cd / && rm -rf /build

WORKDIR /tmp
# 65532: the conventional "nonroot" uid/gid; numeric so that runAsNonRoot can verify it
# without an /etc/passwd entry.
USER 65532:65532
# gateway: 8443 (HTTPS) and 8080 (health); webhook: 9443 (HTTPS) and 8080 (health).
EXPOSE 8443 9443 8080
ENTRYPOINT ["klockproxy"]
CMD ["--help"]
