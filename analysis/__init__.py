"""The operators' analyses on the twin: what-if and N-1 failure analysis, capacity planning.

Pure functions of a network state, a predictor and an intent; the CLI and the controller's gRPC
API call them with the state from a file or from the running network."""
