# artifact-loop image for the api, workers and migrations (see docker-compose.yml).
#   docker build -t artifact-loop .                                        # NVIDIA GPU (CUDA 12.8)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#     --build-arg TORCH_LOCAL_VERSION=cpu -t artifact-loop:cpu .          # CPU only
# TORCH_INDEX_URL is the same variable the README's install and .ci/run use. The CPU variant is
# docker-compose.cpu.yml. Builds need BuildKit (the default of docker compose and docker build).
ARG WHEELS_IMAGE=scratch

# Extra torch wheels for machines whose wheels lie in a local folder (pip's --find-links), as an
# image: docker-compose.pip.yml. Empty by default.
FROM ${WHEELS_IMAGE} AS wheels

FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0
# "cpu" pins torch's CPU build (2.13.0+cpu): a plain torch==2.13.0 from PyPI would be the CUDA one
ARG TORCH_LOCAL_VERSION=

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WEBKNOSSOS_SKIP_VERSION_CHECK=True

WORKDIR /app
# pip's configuration and CA bundle of a machine behind a package mirror or TLS proxy come in as
# build secrets (docker-compose.pip.yml): there only while pip runs, never in a layer. A
# constraint file that configuration names lies outside the build, hence PIP_CONSTRAINT= (the
# versions here are pinned by the build args).
# A current pip (as the README's install), then torch, from the wheel index of the chosen build;
# an index without this version fails here, with pip naming the versions it has
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip_ca_bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,from=wheels,target=/wheels \
    PIP_CONSTRAINT= pip install -U pip \
    && PIP_CONSTRAINT= pip install "torch==${TORCH_VERSION}${TORCH_LOCAL_VERSION:++${TORCH_LOCAL_VERSION}}" \
       --index-url "${TORCH_INDEX_URL}" --find-links /wheels \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && if [ "${TORCH_LOCAL_VERSION}" = cpu ]; then \
         python -c "import torch; assert torch.version.cuda is None, 'not the CPU build'"; fi

COPY pyproject.toml README.md alembic.ini ./
COPY server ./server
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
# the project's bare torch requirement keeps the torch above (pinned, so the resolver never
# swaps in another build of it, e.g. PyPI's CUDA one)
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip_ca_bundle,target=/etc/ssl/certs/ca-certificates.crt \
    python -c "import torch; print(f'torch=={torch.__version__}')" >/tmp/torch.txt \
    && PIP_CONSTRAINT=/tmp/torch.txt pip install . && pip check && rm /tmp/torch.txt

RUN useradd --create-home --uid 1000 artifact && mkdir -p /var/lib/artifact-loop/predictions \
    && chown -R artifact /var/lib/artifact-loop
USER artifact
EXPOSE 8000
CMD ["uvicorn", "server.main:app", "--host", "0.0.0.0", "--port", "8000"]
