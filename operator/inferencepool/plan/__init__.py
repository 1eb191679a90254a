"""The planner: Erlang-C capacity, cost and API break-even for a workload (`inferencepool plan`)."""
