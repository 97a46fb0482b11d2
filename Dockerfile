# ollama-metrics-proxy: a small image, non-root, listening on all interfaces inside the container.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ollama_metrics_proxy ./ollama_metrics_proxy
# This installs the repository's own package (not a version to pin); its dependencies' bounds are in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install ".[fast]"

FROM python:3.11-slim-bookworm
COPY --from=build /install /usr/local
# The request log lives in a volume: the image's user has no home directory and the root filesystem may be
# read-only (Kubernetes readOnlyRootFilesystem), so the data directory is /var/lib/ollama-metrics-proxy.
RUN useradd --system --uid 10001 --no-create-home proxy \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/ollama-metrics-proxy
VOLUME ["/var/lib/ollama-metrics-proxy"]
USER 10001
# Inside a container the proxy must listen beyond loopback; publish only the ports you mean to expose.
ENV OLLAMA_METRICS_PROXY_LISTEN=0.0.0.0:11434 \
    OLLAMA_METRICS_PROXY_METRICS_LISTEN=0.0.0.0:9934 \
    OLLAMA_METRICS_PROXY_UPSTREAM=http://ollama:11434 \
    XDG_DATA_HOME=/var/lib \
    PYTHONUNBUFFERED=1
EXPOSE 11434 9934
# No curl in the image: Python itself checks liveness.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9934/-/healthy', timeout=2)"]
ENTRYPOINT ["ollama-metrics-proxy"]
