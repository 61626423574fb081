"""Baseline methods, one file each; their names are registered in bacl/registry.py."""
