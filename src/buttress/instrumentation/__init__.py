"""Optional instrumentation: Prometheus metrics (``buttress.instrumentation.prometheus``).

Nothing here is imported by the core; each exporter imports its client library when enabled.
"""
