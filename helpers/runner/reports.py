"""What a batch execution leaves for a person: static pages, findings.csv, and run comparisons.

``reports/<run>/index.html`` shows each notebook's verdict table, its first figures
inline, a link to its HTML and, for a failed notebook, the one line of its error;
``reports/index.html`` lists the runs and says how the last execution went (from
``reports/execution.json``: each task's worker, start and end); ``reports/findings.csv`` has one row per
(run, notebook, finding). Pages and notebook HTML need no network: MathJax is
served from ``reports/_static/mathjax`` (copied from jupyter-server-mathjax).
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from helpers.findings import SEVERITIES, STATUSES

MATHJAX_DIR = "_static/mathjax"
KEY_FIGURES = 3  # figures shown inline per notebook, in the order the notebook saved them
STATUS_COLOURS = {"detected": "#b3261e", "not_detected": "#1e7b34", "not_applicable": "#6b6b6b"}


def install_mathjax(reports: Path) -> Path:
    """A local MathJax under ``reports/_static/mathjax`` (once); returns MathJax.js."""
    import jupyter_server_mathjax

    dest = Path(reports) / MATHJAX_DIR
    if not (dest / "MathJax.js").exists():
        src = Path(jupyter_server_mathjax.__file__).parent / "static"
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        os.replace(tmp, dest)
    return dest / "MathJax.js"


def mathjax_url(page: Path, reports: Path) -> str:
    """The relative URL of the local MathJax from ``page`` (a config that needs no other download)."""
    rel = os.path.relpath(install_mathjax(reports), Path(page).parent)
    return f"{Path(rel).as_posix()}?config=TeX-AMS-MML_HTMLorMML-full,Safe"


# ----------------------------------------------------------------------------- collecting
def notebook_result(nb_dir: Path) -> dict:
    """What one notebook's report folder says: summary, error line, HTML, figures."""
    summary_path, error_path = nb_dir / "summary.json", nb_dir / "error.txt"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    error = error_path.read_text().strip().splitlines()[-1] if error_path.exists() else None
    figures = sorted((nb_dir / "figures").glob("*.png"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    html_file = nb_dir / f"{nb_dir.name}.html"
    status = "failed" if error or summary is None else "ok"
    if summary is None and error is None:
        error = "no summary.json and no error: the execution did not finish"
    return {"notebook": nb_dir.name, "status": status, "error": error, "summary": summary,
            "html": html_file if html_file.exists() else None, "figures": figures}


def run_results(run_dir: Path) -> list[dict]:
    return [notebook_result(d) for d in sorted(Path(run_dir).iterdir()) if d.is_dir() and not d.name.startswith(("_", "."))]


def findings_table(reports: Path) -> pd.DataFrame:
    """One row per (run, notebook, finding) over every summary.json under ``reports``."""
    rows = []
    for path in sorted(Path(reports).glob("*/*/summary.json")):
        run, nb = path.parent.parent.name, path.parent.name
        summary = json.loads(path.read_text())
        for fid, f in summary["findings"].items():
            rows.append({"run": run, "notebook": nb, "finding": fid, "status": f["status"], "severity": f["severity"],
                         "message": f["message"], "action": f.get("action", ""),
                         "evidence": json.dumps(f.get("evidence", {}), sort_keys=True)})
    return pd.DataFrame(rows, columns=["run", "notebook", "finding", "status", "severity", "message", "action",
                                       "evidence"])


def compare_runs(reports: Path, a: str, b: str) -> pd.DataFrame:
    """The findings whose status differs between runs ``a`` and ``b`` (missing on one side included)."""
    if a == b:
        raise ValueError(f"compare needs two different runs, got '{a}' twice")
    table = findings_table(reports)
    for run in (a, b):
        if run not in set(table["run"]):
            known = ", ".join(sorted(set(table["run"]))) or "none"
            raise ValueError(f"run '{run}' has no report under {reports} (runs: {known})")
    key = ["notebook", "finding"]
    cols = key + ["status", "severity"]
    both = table.loc[table["run"] == a, cols].merge(table.loc[table["run"] == b, cols], on=key, how="outer",
                                                     suffixes=(f" ({a})", f" ({b})")).fillna("absent")
    return both[both[f"status ({a})"] != both[f"status ({b})"]].reset_index(drop=True)


# ----------------------------------------------------------------------------- pages
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:70rem;color:#1d1d1f;padding:0 1rem}
h1{font-size:1.6rem} h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin:.6rem 0}
th,td{border:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f6} .status{font-weight:600;white-space:nowrap}
.failed{background:#fdecea;border:1px solid #b3261e;padding:.6rem;font-family:monospace}
.figs img{max-width:32%;margin:.2rem;border:1px solid #eee} .meta{color:#555;font-size:.85rem}
.grid{width:auto;font-size:.78rem} .grid th.f{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;
font-weight:500;padding:.4rem .2rem} .grid td.c{text-align:center;padding:0;width:1.6rem;height:1.6rem}
.grid td.c a{display:block;width:100%;height:100%;text-decoration:none;color:inherit;line-height:1.6rem}
.c.critical{background:#b3261e;color:#fff} .c.warning{background:#f2a33a} .c.info{background:#f7e7a1}
.c.not_detected{background:#cfe8d5} .c.not_applicable{background:#eee} .c.absent{background:#fff}
.grid .count td{font-weight:600;text-align:center} .legend span{display:inline-block;padding:.1rem .5rem;margin-right:.3rem}
"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def _verdict_rows(summary: dict) -> str:
    order_s, order_v = {s: i for i, s in enumerate(STATUSES)}, {s: i for i, s in enumerate(SEVERITIES)}
    items = sorted(summary["findings"].items(), key=lambda kv: (order_s[kv[1]["status"]], order_v[kv[1]["severity"]]))
    rows = []
    for fid, f in items:
        colour = STATUS_COLOURS[f["status"]]
        rows.append(f"<tr><td><code>{html.escape(fid)}</code></td><td class=\"status\" style=\"color:{colour}\">"
                    f"{f['status']}</td><td>{f['severity']}</td><td>{html.escape(f['message'])}</td></tr>")
    return ("<table><tr><th>finding</th><th>status</th><th>severity</th><th>message</th></tr>"
            + "".join(rows) + "</table>")


def write_run_index(run_dir: Path) -> Path:
    """``reports/<run>/index.html``: every notebook's verdict, key figures, link, or error line."""
    run_dir = Path(run_dir)
    parts = [f"<h1>Run <code>{html.escape(run_dir.name)}</code></h1>", "<p class=\"meta\"><a href=\"../index.html\">all runs</a></p>"]
    for r in run_results(run_dir):
        nb = r["notebook"]
        parts.append(f"<h2 id=\"{html.escape(nb)}\">{html.escape(nb)}</h2>")
        if r["html"] is not None:
            parts.append(f"<p><a href=\"{nb}/{r['html'].name}\">the executed notebook</a></p>")
        if r["status"] == "failed":
            parts.append(f"<div class=\"failed\">FAILED: {html.escape(r['error'] or '')}</div>")
            continue
        s = r["summary"]
        inputs = ", ".join(f"{k}={Path(v).name}" for k, v in s.get("inputs", {}).items())
        sample = " <strong>(the bundled sample run)</strong>" if s.get("sample_run") else ""
        parts.append(f"<p class=\"meta\">inputs: {html.escape(inputs) or 'none'}{sample}</p>")
        parts.append(_verdict_rows(s))
        figs = [f"<img src=\"{nb}/figures/{p.name}\" alt=\"{html.escape(p.stem)}\">" for p in r["figures"][:KEY_FIGURES]]
        if figs:
            parts.append("<div class=\"figs\">" + "".join(figs) + "</div>")
    path = run_dir / "index.html"
    path.write_text(_page(f"Run {run_dir.name}", "\n".join(parts)))
    return path


def write_root_index(reports: Path) -> Path:
    """``reports/index.html``: each run with its counts of detected findings and failed notebooks."""
    reports = Path(reports)
    rows = []
    for run_dir in sorted(d for d in reports.iterdir() if d.is_dir() and (d / "index.html").exists()):
        results = run_results(run_dir)
        failed = [r["notebook"] for r in results if r["status"] == "failed"]
        detected = sum(f["status"] == "detected" for r in results if r["summary"] for f in r["summary"]["findings"].values())
        critical = sum(f["status"] == "detected" and f["severity"] == "critical"
                       for r in results if r["summary"] for f in r["summary"]["findings"].values())
        rows.append(f"<tr><td><a href=\"{run_dir.name}/index.html\">{html.escape(run_dir.name)}</a></td>"
                    f"<td>{len(results)}</td><td>{detected}</td><td>{critical}</td>"
                    f"<td>{html.escape(', '.join(failed)) or '-'}</td></tr>")
    body = ("<h1>Diagnostic reports</h1><table><tr><th>run</th><th>notebooks</th><th>findings detected</th>"
            "<th>critical</th><th>failed</th></tr>" + "".join(rows) + "</table>" + findings_grid(reports) +
            "<p class=\"meta\">findings.csv: one row per (run, notebook, finding).</p>" + _last_execution(reports))
    path = reports / "index.html"
    path.write_text(_page("Diagnostic reports", body))
    return path


_MARK = {"critical": "&#9632;", "warning": "&#9650;", "info": "&#9679;", "not_detected": "&#10003;",
         "not_applicable": "&ndash;", "absent": ""}


def findings_grid(reports: Path) -> str:
    """Runs x findings: one coloured cell per (run, notebook, finding), detected cells by severity,
    each linking to that notebook's page; a first row counts the runs where each finding was detected."""
    table = findings_table(reports)
    if table.empty:
        return ""
    columns = table[["notebook", "finding"]].drop_duplicates().sort_values(["notebook"], kind="stable")
    columns = list(columns.itertuples(index=False, name=None))
    runs = sorted(table["run"].unique())
    cell = {(r.run, r.notebook, r.finding): r for r in table.itertuples(index=False)}
    notebooks = [(nb, sum(1 for n, _ in columns if n == nb)) for nb in dict.fromkeys(n for n, _ in columns)]
    head1 = "<tr><th rowspan=\"2\">run</th>" + "".join(
        f"<th colspan=\"{k}\">{html.escape(nb)}</th>" for nb, k in notebooks) + "</tr>"
    head2 = "<tr>" + "".join(f"<th class=\"f\">{html.escape(fid)}</th>" for _, fid in columns) + "</tr>"
    counts = "<tr class=\"count\"><td>detected in</td>" + "".join(
        f"<td>{sum(1 for run in runs if (r := cell.get((run, nb, fid))) is not None and r.status == 'detected')}</td>"
        for nb, fid in columns) + "</tr>"
    body = []
    for run in runs:
        tds = []
        for nb, fid in columns:
            r = cell.get((run, nb, fid))
            kind = "absent" if r is None else (r.severity if r.status == "detected" else r.status)
            title = "no report" if r is None else f"{fid}: {r.status} ({r.severity}): {r.message}"
            link = f"{run}/{nb}/{nb}.html"
            inner = _MARK[kind] if r is None else f"<a href=\"{html.escape(link)}\" title=\"{html.escape(title)}\">{_MARK[kind]}</a>"
            tds.append(f"<td class=\"c {kind}\">{inner}</td>")
        body.append(f"<tr><td><a href=\"{html.escape(run)}/index.html\">{html.escape(run)}</a></td>{''.join(tds)}</tr>")
    legend = "".join(f"<span class=\"c {k}\">{_MARK[k]} {k.replace('_', ' ')}</span>"
                     for k in ("critical", "warning", "info", "not_detected", "not_applicable"))
    return ("<h2>Which runs share which finding</h2><p class=\"legend meta\">" + legend +
            " (detected findings by severity; a cell links to the notebook's page)</p><table class=\"grid\">" +
            head1 + head2 + counts + "".join(body) + "</table>")


def _last_execution(reports: Path) -> str:
    """One line on the last execution into ``reports`` (execution.json), or nothing."""
    try:
        rec = json.loads((Path(reports) / "execution.json").read_text())
        line = (f"last execution: {len(rec['tasks'])} notebooks in {rec['seconds']:.0f} s, started {rec['started']}, "
                f"on {'a local cluster' if rec['scheduler'] == 'local' else rec['scheduler']} with {rec['slots']} "
                f"worker threads; at most {rec['max_concurrency']} notebooks at once (execution.json).")
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"<p class=\"meta\">{html.escape(line)}</p>"


def write_reports(reports: Path, runs: list[str]) -> list[Path]:
    """Refresh the pages of ``runs``, the root index and findings.csv."""
    written = [write_run_index(Path(reports) / run) for run in runs]
    written.append(write_root_index(reports))
    csv = Path(reports) / "findings.csv"
    findings_table(reports).to_csv(csv, index=False)
    return written + [csv]
