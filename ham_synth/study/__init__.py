"""`ham-synth study`: generators -> synthetic sets -> classifiers over seeds -> report (plan.py)."""
