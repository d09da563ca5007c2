"""Tools: one module per tool, pure functions and lazy graphs, independent of the service.

The top level holds the seven tool modules (their names travel to workers with queued
work: ``align_raster``, ``archive_extract``, ``build``, ``bulk_download``,
``merge_multispectral``, ``raster_export``, ``rescan_index``) and :mod:`tools.contract`
(what a tool is, and :func:`~tools.contract.tool_spec` to write its SPEC). The libraries the
tools share are subpackages, which never import a tool: :mod:`tools.raster`,
:mod:`tools.render`, :mod:`tools.align`, :mod:`tools.archive`, :mod:`tools.detect` and
:mod:`tools.runtime`. Nothing here imports the service (procplat, Starlette, SQLAlchemy).
"""
