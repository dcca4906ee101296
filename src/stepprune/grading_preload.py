"""Imported once by multiprocessing's fork server before it forks grading workers (see
``grading._worker_context``): math-verify's imports and its one-time set-up (the LaTeX grammar,
sympy's first comparison) are done there, so every forked worker starts warm."""

from stepprune.grading import _ping

_ping()
