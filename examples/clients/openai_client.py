"""The OpenAI SDK on the proxy's /v1: python examples/clients/openai_client.py [PROXY_URL] [MODEL]"""

import sys

from openai import OpenAI

host = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:11435"
model = sys.argv[2] if len(sys.argv) > 2 else "llama3.2"
client = OpenAI(base_url=f"{host}/v1", api_key="ollama")  # Ollama ignores the key; the SDK requires one

stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Why is the sky blue?"}], stream=True,
    stream_options={"include_usage": True},  # lets the proxy count tokens on /v1 streams
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print(f"\n{chunk.usage.completion_tokens} tokens generated")
