"""The logical plan (a graph of nodes) and its plan-time checks, below the API and the runtime."""
