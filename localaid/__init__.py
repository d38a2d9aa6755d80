"""localaid: keeps Ollama and Open WebUI healthy on an NVIDIA GPU under systemd."""

__version__ = "0.2.0"
