# syntax=docker/dockerfile:1
# Daveloper image: gRPC on 50051, the HTTP/WebSocket edge on 8080, data under /data.
#
#   docker build -t daveloper .
#   docker run --rm -p 50051:50051 -p 8080:8080 -v daveloper-data:/data daveloper
#
# Without DAVELOPER_REDIS_URL / DAVELOPER_QDRANT_URL the container runs its own Valkey and Qdrant
# local mode under /data: one container per volume. To scale out, one image serves every role:
# DAVELOPER_ROLE=grpc (the servicers only, registered in Redis; set DAVELOPER_ADVERTISE_ADDR) and
# DAVELOPER_ROLE=edge (the web edge only, in front of them). See docker-compose.yml and
# docs/operations.md, "Deployment".

# --- builder: a wheel of the project, then the project and its pinned dependencies in a venv ---
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/daveloper

# Only what the wheel is built from (setup.cfg reads README.md as the long description).
COPY pyproject.toml setup.cfg constraints.txt README.md ./
COPY daveloper ./daveloper
COPY generated ./generated

# constraints.txt pins every dependency to the versions the test suite passed with; all of them
# ship binary wheels, so the slim image needs no compiler.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/daveloper/bin/python -m pip install -c constraints.txt /wheels/daveloper-*.whl \
 && /opt/daveloper/bin/daveloper --help > /dev/null

# --- runtime: the venv only, as an unprivileged user ---
FROM python:3.11-slim AS runtime

# A fixed UID/GID (10001), so volumes and Kubernetes' runAsUser/fsGroup can name it.
RUN groupadd --system --gid 10001 daveloper \
 && useradd --system --uid 10001 --gid daveloper --home-dir /home/daveloper \
      --create-home --shell /usr/sbin/nologin daveloper \
 && mkdir -p /data \
 && chown daveloper:daveloper /data

COPY --from=builder /opt/daveloper /opt/daveloper

ENV PATH=/opt/daveloper/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAVELOPER_GRPC_ADDR=0.0.0.0:50051 \
    DAVELOPER_EDGE_ADDR=0.0.0.0:8080 \
    DAVELOPER_DATA_DIR=/data

VOLUME /data
WORKDIR /data
USER 10001:10001
EXPOSE 50051 8080

# Liveness, whatever DAVELOPER_ROLE says: the gRPC server answers its health service (roles grpc,
# all) and the edge /healthz (roles edge, all), on the ports DAVELOPER_GRPC_ADDR / DAVELOPER_EDGE_ADDR
# name, over TLS when DAVELOPER_TLS_CERT_FILE is set. Readiness (`daveloper health` without --live)
# is for load balancers and compose's depends_on, not for restarts.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["daveloper", "health", "--live", "--timeout", "3"]

# SIGTERM drains for DAVELOPER_DRAIN_SECONDS (default 10): give `docker stop` a longer --time.
STOPSIGNAL SIGTERM
ENTRYPOINT ["daveloper"]
CMD ["serve"]
