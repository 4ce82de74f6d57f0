# The project's image: the exporter (fmnist train), sample images (fmnist images) and the batch job
# (fmnist batch). Serving uses the official tensorflow/serving image instead; see docker-compose.yml.
FROM python:3.11-slim

# graphviz draws the model diagram that is saved beside every pushed version.
RUN apt-get update \
 && apt-get install -y --no-install-recommends graphviz \
 && rm -rf /var/lib/apt/lists/*

# A virtual environment, so that the same steps work on python:3.11-slim and on a distribution's own
# Python, whose pip refuses to install into the system (PEP 668).
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv "$VIRTUAL_ENV"

# Extra CA certificates (PEM text) pip trusts besides the system's, for builds behind a proxy that
# inspects TLS; empty by default. Written into no layer (like every build argument, `docker history`
# shows it).
ARG EXTRA_CA_CERTS=
# The dependencies and the build backend first, read from pyproject.toml alone, so that a change to the
# code rebuilds only the small layer below (which then needs no index).
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb")); \
print(*p["project"]["dependencies"], *p["build-system"]["requires"], sep="\n")' > /tmp/requirements.txt \
 && if [ -n "$EXTRA_CA_CERTS" ]; then \
      cat /etc/ssl/certs/ca-certificates.crt > /tmp/ca.pem && printf '%s\n' "$EXTRA_CA_CERTS" >> /tmp/ca.pem \
      && export PIP_CERT=/tmp/ca.pem; \
    fi \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm -f /tmp/ca.pem /tmp/requirements.txt /tmp/pyproject.toml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fmnist fmnist
COPY common common
COPY pipeline pipeline
COPY serving serving
COPY batch batch
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && rm -rf build *.egg-info

# The user every container runs as, with the host user's ids (docker-compose.yml passes them) so that
# what the jobs write into host folders belongs to that user. The folders compose mounts volumes on are
# created here, owned by that user: Docker copies a mount point's owner into a new, empty volume, and
# creates a mount point the image lacks as root's.
ARG FMNIST_UID=1000
ARG FMNIST_GID=1000
RUN groupadd --non-unique --gid "$FMNIST_GID" fmnist \
 && useradd --non-unique --uid "$FMNIST_UID" --gid "$FMNIST_GID" --create-home fmnist \
 && install -d -o fmnist -g fmnist /models /runs /home/fmnist/.keras /home/fmnist/.keras/datasets \
      /home/fmnist/.keras/datasets/fashion-mnist
USER fmnist
ENV TF_CPP_MIN_LOG_LEVEL=2

ENTRYPOINT ["fmnist"]
CMD ["--help"]
