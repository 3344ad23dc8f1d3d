"""Evaluation of exported models: `r1-ds eval` (cli.py) and the demo's table (demo_table.py). Modules import
their heavy dependencies when called, so importing this package is cheap."""
