# The project's image: the exporter (fmnist train) and the batch job (fmnist batch).
# Serving uses the official tensorflow/serving image instead; see docker-compose.yml.
FROM python:3.11-slim

# graphviz draws the model diagram that is saved beside every pushed version.
RUN apt-get update \
 && apt-get install -y --no-install-recommends graphviz \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fmnist fmnist
COPY common common
COPY pipeline pipeline
COPY serving serving
COPY batch batch
RUN pip install --no-cache-dir . \
 && useradd --create-home fmnist
USER fmnist
ENV TF_CPP_MIN_LOG_LEVEL=2

ENTRYPOINT ["fmnist"]
CMD ["--help"]
