"""Aggregation of run results into tables, and the paper's figures."""
