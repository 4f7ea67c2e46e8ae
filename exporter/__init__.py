"""exec-exporter: a Prometheus exporter for Exec scenario analytics."""

__version__ = "0.1.0"
