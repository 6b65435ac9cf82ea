"""Data sources (random-access records) and the grain pipeline that feeds the trainer."""
