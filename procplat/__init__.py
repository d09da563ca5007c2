"""procplat: an asynchronous processing service for geospatial datasets on Dask."""

__version__ = "0.1.0"
