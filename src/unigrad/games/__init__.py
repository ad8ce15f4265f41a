"""Games the method values are run on with exact expectations (``tabular.py``: one prompt, n responses,
an exact preference matrix), so that game-theoretic claims are checked on the code that trains models."""
