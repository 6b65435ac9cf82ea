"""Evaluators: things computed from a train state and written for a researcher to look at."""
