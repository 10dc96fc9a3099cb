"""The ``ember`` command: one entry point, subcommands imported only when used."""
