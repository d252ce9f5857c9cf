"""Studies: many runs of the pipeline swept by Hydra, gathered into one table, figures and a report.

``skip``: resume a sweep (completed jobs are not redone); ``calib_cache``: calibration windows
reused across runs; ``aggregate``: a sweep directory -> ``results.csv`` and pivot tables;
``figures``: seaborn figures; ``report``: Markdown + PDF; ``callbacks``: the Hydra callback that
runs all of it when a multirun ends.
"""
