"""pipesd-kit: a digital twin for cloud-edge speculative decoding (command line and version)."""

__version__ = "0.1.0"
