"""Reusable widgets: conversation view, bar chart, loss plot and job progress."""
