"""The operators' analyses on the twin: what-if and N-1 failure analysis, capacity planning, replay of
past states from the telemetry store, anomaly detection on measured path delay, the pyNTM cross-check.

Functions of a network state, a predictor and an intent (the store is passed in where history is
needed); the CLI and the controller call them with the state from a file or from the running network."""
