"""The operator shell: Kopf handlers and the Kubernetes and Prometheus I/O around the pure core.

spec: the CRD's spec into a PoolSpec; observe: Prometheus and pods into Observations; workload: the
Deployment and Service a pool owns; status: what status shows; handlers: the Kopf glue; run: the
`inferencepool run` command; metrics, logs: the operator's own /metrics and structured logs.
"""
