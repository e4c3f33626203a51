"""The ``upad`` command line: one module per command group."""
