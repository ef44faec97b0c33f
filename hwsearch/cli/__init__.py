"""The ``hwsearch`` command line: one module per command group, found at start-up."""
