"""Allow ``python -m ollama_metrics_proxy``."""

import sys

from ollama_metrics_proxy.app.cli import main

sys.exit(main())
