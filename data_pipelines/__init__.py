"""Dask pipelines that turn radar archives and climate fields into zarr crop stores."""
