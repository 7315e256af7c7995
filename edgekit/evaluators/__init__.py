"""Evaluators: accuracy and fidelity, computed apart from execution (runners only produce outputs)."""
