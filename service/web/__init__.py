"""The worker's HTTP side: /metrics, /healthz, the status page, and the control
endpoints' access rule. Standard-library server; no web framework."""
