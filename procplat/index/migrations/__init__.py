"""The index's Alembic migration scripts: ``env.py`` and ``versions/NNNN_slug.py``, one
revision per schema change after the ``0001`` baseline. Run them through
:mod:`procplat.index.migrate`, never by hand."""
