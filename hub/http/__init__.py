"""The hub's web side: JSON API and pages, OpenAPI, /metrics."""
