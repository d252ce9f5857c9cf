"""Studies: many runs of the pipeline swept by Hydra, gathered into one table, figures and a report.

Layered bottom-up, each module importing only those below it:

- ``records``: the sweep data model (every job's ``metrics.json`` -> a results table, knob columns,
  pivot and summary tables);
- ``findings`` (sentences from the numbers), ``figures`` (seaborn), ``dashboard`` (W&B charts and
  the workspace spec, ``wandb-workspaces``), ``describe`` (title, setup, method rules, config
  diff), ``report`` (Markdown + PDF), ``tracking`` (the summary run of the logger): each reads a
  ``records.Sweep``;
- ``aggregate``: writes all of it for one sweep directory, and its command line; ``report_all``:
  every sweep of a model directory in one document (``make report``); ``study_all``: runs every
  offline preset, then ``report_all`` (``make study-all``);
- ``callbacks``: the Hydra callback that runs ``aggregate`` when a multirun ends.

Per-run concerns live outside: resuming (``prunelab.resume``), run names (``prunelab.naming``),
the calibration cache (``prunelab.caches``).
"""
