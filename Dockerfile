# exec-exporter container image.
#
#   docker build -t exec-exporter .
#   docker run --rm -p 10025:10025 exec-exporter demo
#
# See docs/deployment.md for the real API, docker compose and Kubernetes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the package and its dependencies into a virtualenv -------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the wheel needs: editing docs or tests does not invalidate this layer.
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install --no-cache-dir . \
    && exec-exporter --version

# --- runtime: the virtualenv on the same base, run by an unprivileged user ---
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="exec-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Exec scenario analytics, within the API quota" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID so Kubernetes can check runAsNonRoot and volumes can
# be chowned to it (fsGroup) without a passwd lookup.
RUN groupadd --system --gid 10001 exec \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin exec \
    && mkdir -p /etc/exec-exporter /var/lib/exec-exporter \
    && chown 10001:10001 /var/lib/exec-exporter

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The default --config.file is config.yaml in the working directory, so
# `docker run ... exec-exporter --config.check` finds the mounted file too.
WORKDIR /etc/exec-exporter

# The state file lets a restarted exporter serve its last values at once and
# pace its requests by their age instead of refilling in a burst.
VOLUME ["/var/lib/exec-exporter"]

USER 10001:10001

EXPOSE 10025

# No curl in the image: the interpreter that is already there does the probe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10025/-/healthy', timeout=4)"]

# Exec form: exec-exporter is PID 1, receives SIGTERM itself and exits 0.
ENTRYPOINT ["exec-exporter"]
CMD ["--config.file=/etc/exec-exporter/config.yaml", \
     "--state.file=/var/lib/exec-exporter/state.json", \
     "--web.listen-address=:10025"]
