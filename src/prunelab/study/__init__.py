"""Studies: many runs of the pipeline swept by Hydra, gathered into one table, figures and a report.

Layered bottom-up, each module importing only those below it:

- ``records``: the sweep data model (every job's ``metrics.json`` -> a results table, knob columns,
  pivot and summary tables);
- ``figures`` (seaborn), ``report`` (Markdown + PDF), ``tracking`` (the summary run of the
  logger): each reads a ``records.Sweep``;
- ``aggregate``: writes all of it for one sweep directory, and its command line;
- ``callbacks``: the Hydra callback that runs ``aggregate`` when a multirun ends.

Per-run concerns live outside: resuming (``prunelab.resume``), run names (``prunelab.naming``),
the calibration cache (``prunelab.caches``).
"""
