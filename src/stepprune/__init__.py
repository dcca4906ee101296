"""stepprune: attention-guided pruning of reasoning steps in chains of thought."""

__version__ = "0.1.0"
