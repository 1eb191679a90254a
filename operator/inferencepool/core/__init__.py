"""The pure core: queueing (Erlang B/C and inverse solves), forecast, policy (decide), signals, units.

No I/O and no Kubernetes, Kopf or Prometheus client imports (tests/test_layout.py checks it), so the
operator, the planner and the simulator run the same decisions on the same numbers.
"""
