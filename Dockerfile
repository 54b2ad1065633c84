# The streamseg service image: `docker compose` builds it for the consumer and trainer services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Metadata and pins first, so a code change does not invalidate the dependency layer.
COPY pyproject.toml README.md constraints.txt ./
COPY consumer ./consumer
COPY model ./model
# Only the runtime packages: devstack, tests and benchmarks stay out of the image.
RUN pip install -c constraints.txt . \
    && useradd --system --uid 10001 --no-create-home streamseg

USER streamseg
ENTRYPOINT ["streamseg"]
CMD ["--help"]
