# artifact-loop image for the api, workers and migrations (see docker-compose.yml).
#   docker build --build-arg TORCH_VARIANT=cpu -t artifact-loop .     # no GPU
#   docker build --build-arg TORCH_VARIANT=cu128 -t artifact-loop .   # NVIDIA GPU
FROM python:3.11-slim

ARG TORCH_VARIANT=cu128
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WEBKNOSSOS_SKIP_VERSION_CHECK=True

WORKDIR /app
# torch first, from the wheel index of the chosen build, so the project install keeps it
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

COPY pyproject.toml README.md alembic.ini ./
COPY server ./server
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
RUN pip install . && pip check

RUN useradd --create-home --uid 1000 artifact && mkdir -p /var/lib/artifact-loop \
    && chown artifact /var/lib/artifact-loop
USER artifact
EXPOSE 8000
CMD ["uvicorn", "server.main:app", "--host", "0.0.0.0", "--port", "8000"]
