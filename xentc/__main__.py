"""``python -m xentc``: print the build and run-time configuration."""
from ._config import show_config

show_config()
