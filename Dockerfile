# artifact-loop image for the api, workers and migrations (see docker-compose.yml).
#   docker build -t artifact-loop .                                        # NVIDIA GPU (CUDA 12.8)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t artifact-loop .
# TORCH_INDEX_URL is the same variable the README's install and .ci/run use.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WEBKNOSSOS_SKIP_VERSION_CHECK=True

WORKDIR /app
# torch first, from the wheel index of the chosen build, so the project install keeps it;
# an index without this version fails here, with pip naming the versions it has
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

COPY pyproject.toml README.md alembic.ini ./
COPY server ./server
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
RUN pip install . && pip check

RUN useradd --create-home --uid 1000 artifact && mkdir -p /var/lib/artifact-loop/predictions \
    && chown -R artifact /var/lib/artifact-loop
USER artifact
EXPOSE 8000
CMD ["uvicorn", "server.main:app", "--host", "0.0.0.0", "--port", "8000"]
