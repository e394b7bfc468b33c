# corral: `corral serve` (or `corral runner`) with the pinned agent CLIs.
#   docker build -t corral .
#   docker run --rm -v corral:/var/lib/corral corral keys create --role admin
#   docker run -d -p 8487:8487 -v corral:/var/lib/corral corral
# compose.yaml runs it with PostgreSQL and a second runner.
FROM python:3.11-slim-bookworm

# git: the worktrees of coding jobs; bubblewrap: the sandbox of local jobs
# (it needs unprivileged user namespaces: see docs/deploy.md); Node.js and
# npm: the agent CLIs (Claude Code, Codex). Debian's current packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap ca-certificates git nodejs npm \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/corral

# The agent CLIs, pinned by agents/package-lock.json (a layer of their own:
# it changes less often than corral).
COPY agents/package.json agents/package-lock.json agents/
RUN npm ci --prefix agents --omit=dev --no-fund --no-audit --loglevel=error \
    && npm cache clean --force

COPY pyproject.toml README.md ./
COPY src ./src
# corral itself, from this checkout (its dependencies have lower bounds in pyproject.toml).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[remote]"

RUN useradd --create-home --uid 10001 --user-group corral \
    && mkdir -p /var/lib/corral \
    && chown corral:corral /var/lib/corral
USER 10001:10001

ENV PATH=/opt/corral/agents/node_modules/.bin:$PATH \
    CORRAL_DATA_DIR=/var/lib/corral \
    CORRAL_HOST=0.0.0.0 \
    CORRAL_PORT=8487 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/corral"]
EXPOSE 8487

# /health is the cheap liveness check (no credential needed).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8487/health', timeout=4)"]

ENTRYPOINT ["corral"]
CMD ["serve"]
