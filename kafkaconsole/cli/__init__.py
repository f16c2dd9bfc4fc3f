"""The typer command line: ``kafkaconsole run|demo|status|...``."""
