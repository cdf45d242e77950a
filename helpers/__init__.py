"""Shared diagnostics behind the training-run diagnostic workbooks.

One module per diagnosis (``regression`` for 01, ...), plus the cross-cutting
``io`` (loading with schema checks), ``params`` (notebook parameter checks),
``findings`` (summary.json), ``plotting`` and ``paths``. ``simulate`` makes the
sample runs; diagnostics never import it.
"""

__version__ = "0.1.0"
