# One image for every clickloop process: the code-location server, the webserver and the daemon.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home CLICKLOOP_DATA_DIR=/data
WORKDIR /opt/clickloop
COPY pyproject.toml README.md ./
# the domain core (no Dagster), then what Dagster loads: assets, resources, the code location
COPY clickloop ./clickloop
COPY assets ./assets
COPY resources ./resources
COPY pipelines ./pipelines
COPY workspace.yaml ./
RUN pip install --no-cache-dir .
COPY dagster.yaml ${DAGSTER_HOME}/dagster.yaml
# the webserver and the daemon reach the code location over gRPC (service `code` in compose)
RUN printf 'load_from:\n  - grpc_server:\n      host: code\n      port: 4000\n      location_name: clickloop\n' \
    > /opt/dagster/workspace.yaml
EXPOSE 4000 3000
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "pipelines.definitions", "-a", "defs"]
