"""``python -m flashflow.capacity``: the capacity benchmarks' command line."""

from .cli import main

main(prog_name="python -m flashflow.capacity")
