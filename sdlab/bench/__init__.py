"""The bench: rows, tables, resume and locks, summaries, grids, figures and the report."""
