"""Running openkvs in production: health and drain, Prometheus metrics, webhook events."""
