# Flash Flow: the HTTP server and its actors, in a slim image run by a non-root user.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin flashflow

# Only what `pip install .` reads: the project file, its readme and licence, the three packages,
# and the versions to install (requirements.lock, from `make lock`). No extra: the image
# serves against the PostgreSQL and Redis it is given, with no embedded server.
COPY requirements.lock pyproject.toml README.md LICENSE /src/
COPY actors /src/actors
COPY flashflow /src/flashflow
COPY migrations /src/migrations
RUN pip install --constraint /src/requirements.lock /src && rm -rf /src

USER flashflow
WORKDIR /home/flashflow

ENV FLASHFLOW_HOST=0.0.0.0 \
    FLASHFLOW_PORT=8000
EXPOSE 8000

# The slim image has no curl; urlopen raises on a 503 from /readyz, so the check fails.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FLASHFLOW_PORT', '8000'), timeout=4)"]

CMD ["flashflow", "serve"]
