"""portbridge: a framed stdio worker that lets Elixir use Python ML frameworks.

Kept free of imports so that ``python -m bridge`` starts as fast as possible.
"""

__version__ = "0.1.0"
