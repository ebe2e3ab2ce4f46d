"""Command-line tools: each module's `main(argv)` parses arguments and calls into the harness; its
`cli()` is the console script of setup.cfg [options.entry_points] and what tools/<name>.py runs.

Importing the package installs harness/warnings_filter.py's filters before any tool imports Megatron."""

from harness import warnings_filter

warnings_filter.install()
