"""The Typer command line: a thin layer over the aqr_exp library modules."""
