#!/bin/sh
# curl through the proxy: sh examples/clients/curl.sh [PROXY_URL] [MODEL] [METRICS_URL]
set -eu
PROXY=${1:-http://127.0.0.1:11435}
MODEL=${2:-llama3.2}
METRICS=${3:-http://127.0.0.1:9934}
curl -sS --fail "$PROXY/api/generate" -d "{\"model\": \"$MODEL\", \"prompt\": \"Why is the sky blue?\"}"
echo
curl -sS --fail "$PROXY/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}"
echo
curl -sS --fail "$METRICS/metrics" | grep '^ollama_generation_tokens_total'
