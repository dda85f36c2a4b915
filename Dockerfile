# trainforge operator image: `trainforge run` and nothing else. The trainer and inference
# server run from trainer_image/Dockerfile (torch); this image installs the operator
# distribution and the contract only: no trainer code, no torch.
#
#   docker build -t ghcr.io/trainforge/operator:0.1.0 .

ARG PYTHON_IMAGE=python:3.12.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/trainforge
WORKDIR /src
# Only what the distribution is built from; .dockerignore keeps the rest out of the context.
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY operator/ operator/
RUN /opt/trainforge/bin/pip install --no-cache-dir . ./contract \
    && /opt/trainforge/bin/trainforge run --help > /dev/null

FROM ${PYTHON_IMAGE}
# The numeric user the Helm chart's securityContext runs as (runAsNonRoot needs a number).
# The group is created with the same id: containerd takes the primary group from
# /etc/passwd (not from USER's group), and --user-group alone would give it gid 1000.
RUN groupadd --gid 65532 trainforge \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin trainforge
COPY --from=build /opt/trainforge /opt/trainforge
ENV PATH=/opt/trainforge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# Metrics and liveness (/healthz); the chart sets both ports explicitly.
EXPOSE 8000 8080
ENTRYPOINT ["trainforge", "run"]
