"""The dashboard: HTML rendered on the server from the same views the JSON endpoints use.

Pages work without JavaScript (a `<noscript>` refresh); with it, `static/dashboard.js` swaps in
fresh fragments every few seconds and turns a `#key=...` link into a login. Every value from a
status, metrics or spec file is escaped: a job file is user input.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runner.api.chart import PALETTE, Series, line_chart, sparkline
from runner.api.settings import ApiSettings
from runner.api.views import job_rows, pick_run, run_spec_text
from runner.outputs.metrics import MetricsFormatError, MetricsLog
from runner.outputs.runs import run_paths
from runner.outputs.status import JobState, Status
from runner.units import short_duration

__all__ = ["error_page", "index_page", "job_live", "job_page", "jobs_table", "login_page"]

_EVAL_NOISE = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")
# preference runs: the reward accuracy and margin of each step, charted with their held-out twins
_PREFERENCE = ("reward_accuracy", "reward_margin")


# ----------------------------------------------------------------------------- metrics


class _MetricsCache:
    """Parsed curves per metrics file, kept while the file's size and mtime stay the same, so the
    table refreshing every few seconds does not re-read logs that did not change."""

    def __init__(self, size: int = 256) -> None:
        self._entries: OrderedDict[str, tuple[tuple[int, int], dict[str, list[tuple[float, float]]]]] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def curves(self, path: Path) -> dict[str, list[tuple[float, float]]]:
        try:
            stat = path.stat()
        except OSError:
            return {}
        key, stamp = str(path), (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == stamp:
                self._entries.move_to_end(key)
                return hit[1]
        try:
            records = MetricsLog(path).read()
        except MetricsFormatError:
            records = []
        curves: dict[str, list[tuple[float, float]]] = {}
        for record in records:
            step = record.get("step")
            if not isinstance(step, int):
                continue
            for name, value in record.items():
                if (
                    (name in ("loss", *_PREFERENCE) or name.startswith("eval_"))
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                    and not name.endswith(_EVAL_NOISE)
                ):
                    curves.setdefault(name, []).append((float(step), float(value)))
        with self._lock:
            self._entries[key] = (stamp, curves)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return curves


CURVES = _MetricsCache()


# ------------------------------------------------------------------------------ pieces


def _page(title: str, body: str, *, refresh: bool = True) -> str:
    noscript = '<noscript><meta http-equiv="refresh" content="10"></noscript>' if refresh else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f'<link rel="stylesheet" href="/static/dashboard.css">{noscript}'
        '<script src="/static/dashboard.js" defer></script></head>'
        f'<body><header><a class="brand" href="/">runner</a><span class="sub">{escape(title)}</span>'
        '<form class="logout" method="post" action="/logout"><button type="submit">log out</button></form>'
        f"</header><main>{body}</main></body></html>"
    )


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    return short_duration((now - moment).total_seconds()) + " ago"


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return escape(str(value))


def _badge(state: JobState) -> str:
    return f'<span class="state state-{escape(str(state))}">{escape(str(state))}</span>'


def _progress_bar(status: Status) -> str:
    if status.step is None:
        return "-"
    if not status.total_steps:
        return escape(str(status.step))
    fraction = max(0.0, min(1.0, status.step / status.total_steps))
    return (
        f'<progress max="{status.total_steps}" value="{status.step}">{fraction:.0%}</progress> '
        f'<span class="steps">{status.step}/{status.total_steps}</span>'
    )


def _reason(status: Status) -> str:
    waiting = status.extra.get("waiting")
    if status.state is JobState.QUEUED and waiting:
        return escape(str(waiting))
    if status.reason is None:
        return ""
    first = (status.error or "").strip().splitlines()
    return escape(f"{status.reason}: {first[0]}" if first else str(status.reason))


# ------------------------------------------------------------------------------- pages


def login_page(next_path: str, message: str | None = None) -> str:
    """What an unauthenticated browser gets: a form for the key (or a `#key=` link, via the script)."""
    note = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    body = (
        f'<section class="login"><h1>API key needed</h1>{note}'
        "<p>This dashboard is closed: enter the API key the daemon was started with "
        "(<code>RUNNER_API_KEY</code>, <code>--api-key-file</code>, or the generated "
        "<code>api.key</code> in the daemon's state folder).</p>"
        '<form id="login" method="post" action="/login">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<label>API key <input type="password" name="key" autocomplete="current-password" required></label> '
        '<button type="submit">Open the dashboard</button></form>'
        '<p class="hint">A link of the form <code>http://HOST:PORT/#key=KEY</code> logs in directly; '
        "the key stays in the browser (a fragment is never sent to the server).</p></section>"
    )
    return _page("log in", body, refresh=False)


def error_page(status: int, detail: str) -> str:
    return _page(
        f"error {status}",
        f'<p class="crumbs"><a href="/">jobs</a></p><h1>{status}</h1>'
        f'<p class="error" role="alert">{escape(detail)}</p>',
        refresh=False,
    )


def jobs_table(settings: ApiSettings) -> str:
    """The jobs table (a fragment: the index page holds it and the script refreshes it)."""
    rows = job_rows(settings)
    now = datetime.now(UTC)
    if not rows:
        return (
            '<p class="empty" id="jobs-empty">No runs yet. Put a job file into '
            f"<code>{escape(str(settings.jobs_dir))}</code> or submit one with <code>POST /jobs</code>.</p>"
        )
    out = [
        '<table class="jobs" id="jobs-table"><thead><tr><th>job</th><th>state</th><th>attempt</th>'
        "<th>progress</th><th>ETA</th><th>loss</th><th>loss curve</th><th>updated</th><th>reason</th>"
        "</tr></thead><tbody>"
    ]
    for run, status in rows:
        curves = CURVES.curves(run_paths(run).metrics)
        eta = short_duration(status.eta_seconds) if status.state is JobState.RUNNING else "-"
        link = f"/ui/jobs/{quote(status.job)}?run={quote(run.name)}"
        out.append(
            f'<tr data-job="{escape(status.job)}" data-state="{escape(str(status.state))}">'
            f'<td><a href="{escape(link)}">{escape(status.job)}</a><div class="run">{escape(run.name)}</div></td>'
            f"<td>{_badge(status.state)}</td><td>{status.attempt}</td><td>{_progress_bar(status)}</td>"
            f"<td>{eta}</td><td>{_number(status.loss)}</td>"
            f"<td>{sparkline(curves.get('loss', []))}</td>"
            f'<td>{_ago(status.updated, now)}</td><td class="reason">{_reason(status)}</td></tr>'
        )
    out.append("</tbody></table>")
    return "".join(out)


def index_page(settings: ApiSettings) -> str:
    body = (
        "<h1>Jobs</h1>"
        f'<p class="meta">jobs folder <code>{escape(str(settings.jobs_dir))}</code> &middot; runs '
        f"<code>{escape(str(settings.runs_root))}</code></p>"
        f'<div id="jobs" data-refresh="/ui/jobs-table" data-every="3000">{jobs_table(settings)}</div>'
    )
    return _page("jobs", body)


def _charts(run: Path) -> str:
    curves = CURVES.curves(run_paths(run).metrics)
    loss = [Series("train loss", curves.get("loss", []), PALETTE[0])]
    if curves.get("eval_loss"):
        loss.append(Series("eval loss", curves["eval_loss"], PALETTE[1], markers=True))
    parts = [line_chart(loss, title="loss", css_class="chart chart-loss")]
    for name in (n for n in _PREFERENCE if curves.get(n) or curves.get(f"eval_{n}")):
        series = [
            Series("train", curves.get(name, []), PALETTE[0]),
            Series("eval", curves.get(f"eval_{name}", []), PALETTE[1], markers=True),
        ]
        parts.append(
            line_chart(series, title=name.replace("_", " "), css_class=f"chart chart-{name.replace('_', '-')}")
        )
    # rewards and summed log-probabilities live on scales of their own: charted above, or not at all
    others = sorted(
        name
        for name in curves
        if name.startswith("eval_")
        and name != "eval_loss"
        and not name.startswith(("eval_reward_", "eval_logp_chosen", "eval_logp_rejected"))
    )[:8]
    if others:
        series = [
            Series(name.removeprefix("eval_"), curves[name], PALETTE[(i + 2) % len(PALETTE)], markers=True)
            for i, name in enumerate(others)
        ]
        parts.append(line_chart(series, title="evaluation", css_class="chart chart-eval"))
    return f'<div class="charts">{"".join(parts)}</div>'


def _facts(status: Status, detail: dict[str, Any]) -> str:
    model = detail.get("model") or {}
    adapter = status.adapter or detail.get("adapter")
    adapter_text = (
        ", ".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in adapter.items())
        if isinstance(adapter, dict)
        else "-"
    )
    eval_loss = status.extra.get("eval_loss")
    facts = [
        (
            "state",
            _badge(status.state) + (f' <span class="reason">{_reason(status)}</span>' if _reason(status) else ""),
        ),
        ("attempt", str(status.attempt)),
        ("progress", _progress_bar(status)),
        ("epoch", _number(status.epoch)),
        ("loss", _number(status.loss)),
        ("eval loss", _number(eval_loss)),
        ("ETA", short_duration(status.eta_seconds) if status.state is JobState.RUNNING else "-"),
        ("tokens/s", _number(status.tokens_per_second)),
        ("model", f"<code>{escape(str(model.get('source') or '-'))}</code> ({escape(str(model.get('kind') or '-'))})"),
        ("adapter", escape(adapter_text)),
        ("trainable parameters", f"{_number(status.trainable_params)} of {_number(status.total_params)}"),
        ("started", escape(status.started.astimezone().strftime("%Y-%m-%d %H:%M:%S")) if status.started else "-"),
        ("finished", escape(status.finished.astimezone().strftime("%Y-%m-%d %H:%M:%S")) if status.finished else "-"),
    ]
    return '<table class="facts">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>"


def _errors(status: Status) -> str:
    issues = found if isinstance(found := status.extra.get("errors"), list) else []
    if not status.error and not issues:
        return '<section class="errors none"><h2>Errors</h2><p>none</p></section>'
    items = "".join(
        f"<li><code>{escape(str(i.get('file')))}:{escape(str(i.get('line')))}:{escape(str(i.get('column')))}"
        f"</code> {escape(str(i.get('path') or ''))} {escape(str(i.get('message')))}</li>"
        for i in issues
        if isinstance(i, dict)
    )
    listed = f"<ul>{items}</ul>" if items else ""
    text = f"<pre>{escape(status.error)}</pre>" if status.error and not items else ""
    return f'<section class="errors"><h2>Errors</h2>{listed}{text}</section>'


def job_live(settings: ApiSettings, name: str, run_id: str | None) -> str:
    """The part of a job page that changes while it runs: facts, charts, errors."""
    from runner.api.views import job_detail

    run, status, _ = pick_run(settings, name, run_id)
    detail = job_detail(settings, name, run.name)
    return f'<div class="live" data-state="{escape(str(status.state))}">{_facts(status, detail)}{_charts(run)}{_errors(status)}</div>'


def _log_tail(run: Path, lines: int = 80) -> str:
    path = run / "train.log"
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def job_page(settings: ApiSettings, name: str, run_id: str | None) -> str:
    run, _status, runs = pick_run(settings, name, run_id)
    live_url = f"/ui/jobs/{quote(name)}/live?run={quote(run.name)}"
    run_links = " ".join(
        (
            f'<a class="run-link{" current" if r == run else ""}" href="/ui/jobs/{quote(name)}?run={quote(r.name)}">'
            f"{escape(r.name)}</a>"
        )
        for r in reversed(runs)
    )
    spec_text, spec_origin = run_spec_text(run)
    spec = f'<pre class="spec">{escape(spec_text)}</pre>' if spec_text else "<p>-</p>"
    log = _log_tail(run)
    log_html = (
        f'<details><summary>train.log (last lines)</summary><pre class="log">{escape(log)}</pre></details>'
        if log
        else ""
    )
    body = (
        f'<p class="crumbs"><a href="/">jobs</a> / {escape(name)}</p><h1>{escape(name)}</h1>'
        f'<p class="runs">runs: {run_links}</p>'
        f'<div id="live" data-refresh="{escape(live_url)}" data-every="3000">{job_live(settings, name, run.name)}</div>'
        f"<section><h2>Spec <small>({escape(spec_origin)})</small></h2>{spec}</section>{log_html}"
        f'<p class="meta">JSON: <a href="/jobs/{quote(name)}?run={quote(run.name)}">status</a> &middot; '
        f'<a href="/jobs/{quote(name)}/metrics?run={quote(run.name)}">metrics</a></p>'
    )
    return _page(f"{name} ({run.name})", body)
