"""The official ollama client through the proxy: python examples/clients/ollama_client.py [PROXY_URL]"""

import sys

import ollama

host = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:11435"
model = sys.argv[2] if len(sys.argv) > 2 else "llama3.2"
client = ollama.Client(host=host)

for part in client.chat(model=model, messages=[{"role": "user", "content": "Why is the sky blue?"}], stream=True):
    print(part.message.content, end="", flush=True)
print()
reply = client.generate(model=model, prompt="Say hello in one word.")
print(f"{reply.eval_count} tokens in {reply.eval_duration / 1e9:.2f} s")
