"""inferencepool: size GPU inference fleets as queues (Erlang-C), not by utilisation thresholds."""

__version__ = "0.1.0"
