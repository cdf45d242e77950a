"""Executing the notebooks (papermill, HTML), manifests on dask, report pages, sample regeneration, the command line."""
