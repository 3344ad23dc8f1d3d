"""Evaluation of exported models: `r1-ds eval` (cli.py) and the demo's table. Modules import their heavy
dependencies when called, so importing this package is cheap."""


def evaluation_table(*args, **kwargs) -> str:
    """See demo_table.evaluation_table."""
    from .demo_table import evaluation_table as table

    return table(*args, **kwargs)
