"""Replay request traces through a simulated GPU fleet under each scaling policy (`inferencepool simulate`).

trace: load and reshape traces; fleet: the discrete-event fleet; baselines: the policies; compare: run them
side by side; report: numbers and the figure; cli: the command. Our policies call the operator's own
policy.decide(), so what the simulator measures is what the cluster gets.
"""
