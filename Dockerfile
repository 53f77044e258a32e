# syntax=docker/dockerfile:1
# router: docker build -t router . && docker run --rm -v $PWD/config/router.yaml:/etc/router/router.yaml:ro router
# The image runs as an unprivileged user with a read-only-friendly layout: only /var/lib/router
# (state_dir) and /tmp need to be writable (emptyDirs in deploy/kubernetes/deployment.yaml).

# The base image is pinned by digest (the multi-platform index of python:3.11-slim-trixie, Python
# 3.11.15, as docker-library/repo-info records it), so a rebuild gets the same bytes. To take the
# base's security updates, bump both FROM lines to the current digest:
#   docker buildx imagetools inspect python:3.11-slim-trixie   (the "Digest:" line)
FROM python:3.11-slim-trixie@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/router/.venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy/image-requirements.lock ./
# Dependencies from the lock file, exactly (the examples extra brings what the shipped handlers
# import inside their workers, boto3 and Pillow, as Lambda's runtime would); then the package
# itself without resolving anything, and a check that the two agree.
RUN /opt/router/.venv/bin/pip install -r image-requirements.lock
COPY router ./router
RUN /opt/router/.venv/bin/pip install --no-deps '.[examples]' \
 && /opt/router/.venv/bin/pip check

FROM python:3.11-slim-trixie@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff
# tini is PID 1: it reaps every orphan a handler leaves behind (a daemonized grandchild that left
# its environment's process group), which the daemon as PID 1 would leave as zombies, and passes
# SIGTERM to the daemon alone, which drains and stops its workers itself.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 router \
 && useradd --system --uid 10001 --gid router --home-dir /var/lib/router --no-create-home \
        --shell /usr/sbin/nologin router \
 && install -d -o router -g router -m 0750 /var/lib/router \
 && install -d -m 0755 /etc/router
COPY --from=build /opt/router/.venv /opt/router/.venv
ENV PATH=/opt/router/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ROUTER_CONFIG=/etc/router/router.yaml
WORKDIR /var/lib/router
USER 10001:10001
EXPOSE 9000
# Kubernetes uses its own probes (deployment.yaml); this serves plain `docker run` and compose.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/healthz', timeout=4)"]
# SIGTERM starts the drain (in-flight invocations finish, checkpoints are written); give
# `docker stop -t` more than shutdown_timeout_seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "router", "run"]
