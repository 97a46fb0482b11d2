"""Allow ``python -m ollama_metrics_proxy``."""

import sys

from ollama_metrics_proxy.cli import main

sys.exit(main())
