"""``python -m stepprune``: the command-line interface."""

from stepprune.cli import app

# Guarded: multiprocessing may import this file again, by path, in a worker process.
if __name__ == "__main__":
    app(prog_name="stepprune")
