# The eos worker image: the project installed into Python 3.11, running unprivileged.
# A job is a Python file; examples/ is included, so the image runs the demo job as is:
#   docker run eos-worker run examples/running_sum.py --bootstrap-servers ... --http-port 8080
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY connectors ./connectors
COPY statestore ./statestore
COPY eos ./eos
RUN pip install ".[postgres]"
COPY examples ./examples

# Volumes mounted on these paths start with this ownership.
RUN useradd --uid 10001 --create-home eos \
    && mkdir -p /var/lib/eos /checkpoints \
    && chown eos:eos /var/lib/eos /checkpoints
USER eos

# The status page, /metrics and /healthz when the worker runs with --http-port 8080.
EXPOSE 8080
ENTRYPOINT ["eos"]
CMD ["--help"]
