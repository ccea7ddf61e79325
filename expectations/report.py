"""A validation report a person can read anywhere: one self-contained HTML page per validation.

Great Expectations' Data Docs load their styles and scripts from public CDNs; offline, or behind
a proxy that blocks them, they render as unstyled text. This page has its styles inline and no
scripts, so it reads the same from S3, a laptop or an air-gapped cluster. It says what the alert
and the log say (rules, columns, row counts: never the values of a row) and links to the full
Data Docs page beside it (built for failing batches, where someone reads every expectation).
"""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape

REPORT_FILE = "report.html"

_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; margin: 0;
       background: #f5f7fa; }
main { max-width: 960px; margin: 2rem auto; background: #fff; padding: 1.5rem 2rem; border-radius: 8px;
       box-shadow: 0 1px 3px rgba(0,0,0,.12); }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
.verdict { display: inline-block; padding: .15rem .6rem; border-radius: 4px; font-weight: 600; color: #fff; }
.passed { background: #2f855a; } .failed { background: #c53030; } .warning { background: #b7791f; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 1rem 0; }
dt { color: #52606d; } dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid #e4e7eb; vertical-align: top; }
th { background: #f0f4f8; font-weight: 600; }
td.count { text-align: right; font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .9em; }
footer { color: #7b8794; font-size: .85rem; margin-top: 1.5rem; }
"""


def _rows(findings, kind: str) -> str:
    rows = []
    for finding in findings:
        count = "" if finding.unexpected_count is None else f"{finding.unexpected_count:,}"
        rows.append(f'<tr><td><span class="verdict {kind}">{"error" if kind == "failed" else "warning"}</span></td>'
                    f"<td>{escape(finding.column or '(batch)')}</td><td><code>{escape(finding.rule)}</code></td>"
                    f'<td class="count">{count}</td><td>{escape(finding.detail)}</td></tr>')
    return "".join(rows)


def render(outcome, data_docs: str | None = None) -> str:
    """The page for one ``gate.Outcome``; ``data_docs`` is a link to the full Data Docs page."""
    verdict = "passed" if outcome.passed else "failed"
    title = f"{outcome.suite}: {'passed' if outcome.passed else f'FAILED, {len(outcome.failures)} rule(s) broken'}"
    facts = {"batch": outcome.source, "extraction date": outcome.as_of or "unknown",
             "rows": "unreadable" if outcome.rows is None else f"{outcome.rows:,}",
             "expectations checked": str(outcome.checked), "rules broken": str(len(outcome.failures)),
             "warnings": str(len(outcome.warnings))}
    if outcome.quarantine_uri:
        facts["quarantined at"] = outcome.quarantine_uri
    findings = _rows(outcome.failures, "failed") + _rows(outcome.warnings, "warning")
    table = ("<table><thead><tr><th>severity</th><th>column</th><th>rule</th><th>rows</th><th>detail</th></tr>"
             f"</thead><tbody>{findings}</tbody></table>") if findings else "<p>Every rule of the suite held.</p>"
    docs = (f'<p>Every expectation with its result: <a href="{escape(data_docs)}">the Great Expectations Data '
            "Docs page</a> (styled when the browser can reach public CDNs).</p>") if data_docs else ""
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
            f'<body><main><h1>Validation of {escape(outcome.suite)} <span class="verdict {verdict}">{verdict}</span>'
            f"</h1><dl>{''.join(f'<dt>{escape(k)}</dt><dd>{escape(v)}</dd>' for k, v in facts.items())}</dl>"
            f"{table}{docs}<footer>Written {made} by the validation gate. Rules, columns and row counts "
            "only: the rows themselves stay in the kept export.</footer></main></body></html>")
