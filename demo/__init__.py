"""``make demo``: a stand-in Ollama, the proxy in front of it, and a little varied traffic."""
