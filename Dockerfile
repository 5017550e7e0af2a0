# The eos worker image: the project installed into Python 3.11, running unprivileged.
# A job is a Python file; examples/ is included, so the image runs the demo job as is:
#   docker run eos-worker run examples/running_sum.py --bootstrap-servers ... --http-port 8080
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first, in a layer of their own, at the versions pinned in the lock file:
# a change to the project's code rebuilds only the layers below.
COPY deploy/requirements.lock ./deploy/requirements.lock
RUN pip install --no-deps -r deploy/requirements.lock
COPY pyproject.toml README.md ./
COPY service ./service
COPY connectors ./connectors
COPY statestore ./statestore
COPY eos ./eos
# The project alone; `pip check` fails the build if the lock no longer satisfies it.
RUN pip install --no-deps . && pip check
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
