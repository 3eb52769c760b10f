"""One module per ``supirkit`` subcommand (see ``supirkit.cli``)."""
