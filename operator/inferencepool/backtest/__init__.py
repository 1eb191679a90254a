"""`inferencepool backtest`: replay a pool's real Prometheus history through decide() and the baselines."""
