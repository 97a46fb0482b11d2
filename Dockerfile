# ollama-metrics-proxy: a small image, non-root, listening on all interfaces inside the container.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ollama_metrics_proxy ./ollama_metrics_proxy
RUN pip install --no-cache-dir --prefix=/install ".[fast]"

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home proxy
USER proxy
# Inside a container the proxy must listen beyond loopback; publish only the ports you mean to expose.
ENV OLLAMA_METRICS_PROXY_LISTEN=0.0.0.0:11434 \
    OLLAMA_METRICS_PROXY_METRICS_LISTEN=0.0.0.0:9934 \
    OLLAMA_METRICS_PROXY_UPSTREAM=http://ollama:11434 \
    PYTHONUNBUFFERED=1
EXPOSE 11434 9934
# No curl in the image: Python itself checks liveness.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9934/-/healthy', timeout=2)"]
ENTRYPOINT ["ollama-metrics-proxy"]
