"""Benchmarks outside the core pipeline (``stepprune bench ...``).

    common   one timer (``seconds``, ``paired_seconds``), one memory meter (``PeakMemory``),
             one synthetic trace (``synthetic_trace``)
    scoring  exactness, time and memory of attention scoring at length N
    kv       kv vs text re-evaluation, online peak cache, decode speed, cache exactness
    scorers  planted-step ground truth: AUROC, answer recovery and lift of every scorer
    auroc    the ranking statistics of ``scorers`` (AUROC on within-trace ranks, its interval)

Each benchmark builds what it measures from the pipeline's own pieces (session, scorers,
policies, modes, KV cache), so it measures what ``stepprune run`` does.
"""

# The shortest sequence each benchmark accepts (here, so the command line checks --tokens
# before it imports torch).
SCORING_MIN_TOKENS = 64
KV_MIN_TOKENS = 128
