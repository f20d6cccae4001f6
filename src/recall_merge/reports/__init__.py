"""Plots, representation analysis and self-contained HTML reports."""
