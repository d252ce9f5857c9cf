"""A sweep's W&B dashboard, defined in code with ``wandb-workspaces``: the report's charts over
the sweep's group.

:func:`charts` turns the figures the report draws into long-format tables (one row per job and
line point) that the summary run logs as W&B line charts (``wandb.plot.line``, one line per
method / setting). :func:`workspace` builds a workspace whose runs are the sweep's group and whose
sections are those charts (custom-chart panels over the summary run's tables), scatter and
parallel-coordinates plots of the jobs (config knob against summary metric), the results
tables and the report's figures. :func:`write_spec` writes it beside the report as
``dashboard.json`` (readable panel list + the view W&B stores); ``--push`` (or a sweep logged
with ``logger.mode=online``) saves it to the W&B server.

    python -m prunelab.study.dashboard multirun/smollm2_135m/sparsity_curve [--push --entity ME]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from prunelab.study import compression
from prunelab.study.records import (
    KNOB_FIGURE,
    STDERR,
    Sweep,
    headline_metrics,
    knob_label,
    prunes_nothing,
    varying_knobs,
    with_setting,
)

log = logging.getLogger(__name__)
LINE_CHART = "wandb/line/v0"  # the Vega preset wandb.plot.line logs with: fields x, y, stroke
SPEC_NAME = "dashboard.json"


@dataclass(frozen=True)
class Chart:
    """One line chart: ``value`` against ``x``, one line per ``stroke``; ``frame`` holds its points."""

    key: str        # the summary run's key (its table: ``<key>_table``)
    title: str
    x: str
    stroke: str | None
    frame: pd.DataFrame
    figure: str     # the report figure it mirrors


def summary_run_id(group: str) -> str:
    """A stable W&B run id per sweep group, so re-aggregating updates the same summary run."""
    return "summary-" + hashlib.sha1(group.encode()).hexdigest()[:12]


def _points(frame: pd.DataFrame, x: str, x_name: str, stroke: str | None, metric: str) -> pd.DataFrame:
    data = frame.dropna(subset=[metric, x])
    columns = {x_name: data[x], "value": data[metric]}
    if stroke:
        columns[stroke] = data[stroke].astype(str)
    points = pd.DataFrame(columns)
    keys = [x_name] + ([stroke] if stroke else [])
    return points.groupby(keys, sort=True, as_index=False)["value"].mean()


def _short(metric: str) -> str:
    return metric.replace("eval/", "").replace("zeroshot/", "zs_").replace("/", "_")


def charts(sweep: Sweep, figure_names: list[str]) -> list[Chart]:
    """The report's figures (those ``figure_names`` says were drawn) as line charts, one per metric."""
    done = sweep.completed
    pruned = done[~prunes_nothing(done)]
    headline = headline_metrics(sweep)
    ppl = [m for m in headline if m.startswith("eval/ppl_")]
    mean_acc = [m for m in headline if m.endswith("mean_acc")]
    layout: dict[str, tuple[pd.DataFrame, str, str, str | None, list[str]]] = {
        "ppl_vs_sparsity": (pruned, "sparsity", "sparsity", "method", ppl),
        "zeroshot_vs_sparsity": (pruned, "sparsity", "sparsity", "method", mean_acc),
        "patterns": (pruned, "pattern", "pattern", "method", ppl),
        "module_sensitivity": (with_setting(pruned), "modules", "modules", "setting", ppl),
        "calibration": (pruned, "calib_data", "calib_data", "method", headline),
    }
    if compression.is_compression(done):  # each pruned model a line through its formats (fp16 -> 8 -> 4 bits)
        found_points = compression.points(sweep)
        found_points = found_points.assign(model=[m if s == "dense" else f"{m} {s}" for m, s in
                                                  zip(found_points["method"], found_points["setting"])])
        ppl_acc = [m for m in found_points.columns if m.startswith("eval/ppl_") or m.endswith("mean_acc")]
        layout["compression_bytes"] = (found_points, compression.RATIO, "x smaller than dense F16 file", "model", ppl_acc)
        layout["compression_speed"] = (found_points, compression.SPEEDUP_F16, "prefill speedup vs dense F16", "model", ppl_acc)
        layout["compression_decode"] = (found_points, compression.DECODE_F16, "decode speedup vs dense F16", "model", ppl_acc)
    for name in figure_names:
        if name.startswith(KNOB_FIGURE):
            knob = name.removeprefix(KNOB_FIGURE)
            layout[name] = (with_setting(done.dropna(subset=[knob])), knob, knob_label(knob), "setting", ppl + mean_acc)
    found = []
    for name in figure_names:
        if name not in layout:
            continue
        frame, x, x_name, stroke, metrics = layout[name]
        stroke = stroke if stroke in frame and frame[stroke].astype(str).nunique() > 1 else None
        for metric in metrics:
            points = _points(frame, x, x_name, stroke, metric)
            if len(points) >= 2:
                found.append(Chart(f"charts/{name}/{_short(metric)}", f"{metric} vs {x_name}", x_name, stroke,
                                   points, name))
    if "owl_block_sparsity" in figure_names and not sweep.block_sparsity.empty:
        blocks = sweep.block_sparsity.dropna(subset=["method.lambda_"])
        blocks = blocks.assign(job_label=[f"{m} s={float(s):g} λ={float(lam):g}" for m, s, lam in
                                          zip(blocks["method"], blocks["sparsity"], blocks["method.lambda_"])])
        points = pd.DataFrame({"block": blocks["block"], "value": blocks["block_sparsity"], "job": blocks["job_label"]})
        found.append(Chart("charts/owl_block_sparsity", "OWL block sparsity vs block", "block", "job", points,
                           "owl_block_sparsity"))
    return found


def long_table(sweep: Sweep) -> pd.DataFrame:
    """One row per job and headline or speed metric, with the varying knobs and the standard error:
    the table W&B plots against any knob (``value`` by ``metric``, coloured by ``method``)."""
    done = sweep.completed
    knobs = [k for k in varying_knobs(done) if k in done] or ["method"]
    metrics = [m for m in headline_metrics(sweep) if m in done]
    rows = []
    for _, job in done.iterrows():
        for metric in metrics:
            if pd.notna(job[metric]):
                stderr = job.get(metric + STDERR)
                rows.append({"job": str(job["job"]), **{knob_label(k): job[k] for k in knobs}, "metric": metric,
                             "value": float(job[metric]), "stderr": float(stderr) if pd.notna(stderr) else None})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- workspace
def _config_key(column: str) -> str:
    """A results column as the job runs' config key (jobs log the resolved config)."""
    return {"method": "method.name", "modules": "target.modules", "calib_data": "calib_data.dataset",
            "pattern": "pattern", "sparsity": "sparsity"}.get(column, column)


def panels(sweep: Sweep, figure_names: list[str]) -> list[dict]:
    """The dashboard's panels, readable: section, kind, title and what each plots."""
    found = [{"section": "Study charts (as in the report)", "kind": "CustomChart (line)", "title": chart.title,
              "table": f"{chart.key}_table", "x": chart.x, "y": "value", "stroke": chart.stroke}
             for chart in charts(sweep, figure_names)]
    done = sweep.completed
    pruned = done[~prunes_nothing(done)]  # a dense baseline has no alpha or lambda
    knobs = [k for k in varying_knobs(done) if k in pruned and len(pruned[k].dropna())
             and pd.to_numeric(pruned[k].dropna(), errors="coerce").notna().all()]
    for metric in headline_metrics(sweep):
        for knob in knobs:
            found.append({"section": "Jobs", "kind": "ScatterPlot", "title": f"{metric} vs {knob_label(knob)}",
                          "x": f"config.{_config_key(knob)}", "y": f"summary.{metric}"})
    if compression.is_compression(done):  # every job: its file and speed against its accuracy
        tokens = compression.prefill_tokens(done)
        axes = [compression.FILE_BYTES, "quant/compression_vs_fp16", "quant/compression_vs_fp16_if_zeros_sparse",
                *([f"bench/prefill_speedup_{tokens}"] if tokens else []), "bench/decode_speedup_b1"]
        for metric in [m for m in headline_metrics(sweep) if m.startswith("eval/ppl_") or m.endswith("mean_acc")]:
            for axis in (a for a in axes if a in done and done[a].notna().any()):
                found.append({"section": "Compression: bytes and speed against accuracy", "kind": "ScatterPlot",
                              "title": f"{metric} vs {axis}", "x": f"summary.{axis}", "y": f"summary.{metric}"})
    if headline_metrics(sweep):
        found.append({"section": "Jobs", "kind": "ParallelCoordinatesPlot", "title": "knobs and metrics",
                      "columns": [f"config.{_config_key(k)}" for k in varying_knobs(done)]
                      + [f"summary.{m}" for m in headline_metrics(sweep)]})
    found += [{"section": "Tables", "kind": "WeavePanelSummaryTable", "title": name, "table": name}
              for name in ("summary/results", "summary/long")]
    found += [{"section": "Report figures", "kind": "MediaBrowser", "title": "figures",
               "media": [f"figures/{name}" for name in figure_names]}] if figure_names else []
    return found


def workspace(sweep: Sweep, figure_names: list[str], group: str, project: str, entity: str | None):
    """The wandb-workspaces ``Workspace`` of :func:`panels` over the runs of ``group``."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections: dict[str, list] = {}
    for panel in panels(sweep, figure_names):
        kind = panel["kind"]
        if kind.startswith("CustomChart"):
            fields = {"x": panel["x"], "y": "value", **({"stroke": panel["stroke"]} if panel["stroke"] else {})}
            built = wr.CustomChart(query={"summaryTable": {"tableKey": panel["table"]}}, chart_name=LINE_CHART,
                                   chart_fields=fields, chart_strings={"title": panel["title"]})
        elif kind == "ScatterPlot":
            x = (wr.SummaryMetric(panel["x"].removeprefix("summary.")) if panel["x"].startswith("summary.")
                 else wr.Config(panel["x"].removeprefix("config.")))
            built = wr.ScatterPlot(title=panel["title"], x=x, y=wr.SummaryMetric(panel["y"].removeprefix("summary.")))
        elif kind == "ParallelCoordinatesPlot":
            built = wr.ParallelCoordinatesPlot(title=panel["title"], columns=[
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config(c.removeprefix("config.")) if c.startswith("config.")
                                                 else wr.SummaryMetric(c.removeprefix("summary.")))
                for c in panel["columns"]])
        elif kind == "WeavePanelSummaryTable":
            built = wr.WeavePanelSummaryTable(table_name=panel["table"])
        else:
            built = wr.MediaBrowser(title=panel["title"], media_keys=panel["media"], num_columns=2)
        sections.setdefault(panel["section"], []).append(built)
    return ws.Workspace(
        entity=entity or "", project=project, name=workspace_name(group),
        sections=[ws.Section(name=name, panels=built, is_open=True) for name, built in sections.items()],
        runset_settings=ws.RunsetSettings(filters=ws.And(ws.Metric("Group") == group)),
    )


def workspace_name(group: str) -> str:
    """``prunelab: <group>`` with symbols W&B refuses in a workspace name (``=``, ``+``, ``<``: the
    Unicode symbol categories) spelled out; an ad-hoc sweep's group is named by its overrides."""
    text = group.replace("=", " is ").replace("+", " and ")
    return "prunelab: " + "".join(c if not unicodedata.category(c).startswith(("So", "Sk", "Sm", "Sc", "Cs")) else "_"
                                  for c in text)


def write_spec(sweep: Sweep, figure_names: list[str], group: str, project: str = "prunelab",
               entity: str | None = None, path: Path | None = None) -> Path:
    """``dashboard.json`` beside the report: the panels in words and the view W&B would store."""
    built = workspace(sweep, figure_names, group, project, entity)
    spec = {"group": group, "project": project, "entity": entity, "name": built.name,
            "summary_run_id": summary_run_id(group), "panels": panels(sweep, figure_names),
            "view": built._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")}
    path = path or sweep.directory / SPEC_NAME
    path.write_text(json.dumps(spec, indent=1) + "\n")
    return path


def push(sweep: Sweep, figure_names: list[str], group: str, project: str, entity: str | None) -> str:
    """Create (or update) the workspace on the W&B server; returns its URL. Needs ``wandb login``."""
    import wandb

    entity = entity or wandb.Api().default_entity
    return workspace(sweep, figure_names, group, project, entity).save().url


def main(argv: list[str] | None = None) -> None:
    from prunelab.naming import sweep_group
    from prunelab.study.records import collect

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--project", default="prunelab")
    parser.add_argument("--entity", default=None)
    parser.add_argument("--group", default=None, help="default: the sweep's group (its directory under multirun/)")
    parser.add_argument("--push", action="store_true", help="create the workspace on the W&B server (online)")
    args = parser.parse_args(argv)
    sweep = collect(args.sweep_dir)
    figure_names = sorted(p.stem for p in (sweep.directory / "figures").glob("*.png"))
    group = args.group or sweep_group(sweep.directory)
    print(f"spec: {write_spec(sweep, figure_names, group, args.project, args.entity)}")
    if args.push:
        print(f"workspace: {push(sweep, figure_names, group, args.project, args.entity)}")


if __name__ == "__main__":
    main()
