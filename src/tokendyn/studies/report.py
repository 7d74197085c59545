"""`tokendyn reproduce`: run every experiment section, write index.html and summary.json."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from pathlib import Path

from tokendyn.errors import ConfigError
from tokendyn.studies import Section, dmft, engine, icl, multiscale, real_models, transformer_pde

# Each reproduced result adds its experiment's run(quick, out_dir) here, under a short name.
SECTIONS: dict[str, Callable[[bool, Path], Section]] = {
    "engine": engine.run,
    "transformer_pde": transformer_pde.run,
    "multiscale": multiscale.run,
    "dmft": dmft.run,
    "icl": icl.run,
    "real_models": real_models.run,
}


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;width:100%;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px} th{background:#f4f4f4}
.pass{color:#176b1f;font-weight:bold} .fail{color:#b00020;font-weight:bold}
figure{display:inline-block;margin:1em;max-width:100%} img{max-width:100%}
figcaption{font-size:13px;color:#444} code{background:#f4f4f4;padding:1px 4px}
"""


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def render_html(sections: list[Section], seconds: float, quick: bool) -> str:
    total = sum(len(s.checks) for s in sections)
    passed = sum(c.passed for s in sections for c in s.checks)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tokendyn reproduction report</title><style>{CSS}</style></head><body>",
        "<h1>tokendyn reproduction report</h1>",
        f"<p>{passed}/{total} checks passed in {seconds:.0f} s "
        f"({'quick' if quick else 'full'} mode).</p>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2><p>{html.escape(s.intro)}</p>")
        parts.append(f"<p>Regenerate: <code>{html.escape(s.command)}</code></p>")
        parts.append(
            "<table><tr><th>check</th><th>theory</th><th>simulation</th><th>tolerance</th>"
            "<th>rule</th><th>result</th></tr>"
        )
        for c in s.checks:
            verdict = (
                "<span class='pass'>pass</span>" if c.passed else "<span class='fail'>FAIL</span>"
            )
            name = html.escape(c.name) + (
                f"<br><small>{html.escape(c.note)}</small>" if c.note else ""
            )
            parts.append(
                f"<tr><td>{name}</td><td>{_fmt(c.theory)}</td><td>{_fmt(c.simulation)}</td>"
                f"<td>{_fmt(c.tolerance)}</td><td>{c.rule}</td><td>{verdict}</td></tr>"
            )
        parts.append("</table>")
        for path, caption in s.figures:
            parts.append(
                f"<figure><img src='{html.escape(path.name)}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: str | Path, quick: bool = True, only: list[str] | None = None) -> list[dict]:
    """Run the sections (all, or those named in `only`) into `out`; returns the summary."""
    unknown = sorted(set(only or ()) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            "section",
            f"unknown section(s) {', '.join(unknown)}",
            f"choose from {', '.join(SECTIONS)}",
        )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sections = [run(quick, out_dir) for name, run in SECTIONS.items() if not only or name in only]
    summary = [c.as_dict() for s in sections for c in s.checks]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "index.html").write_text(render_html(sections, time.perf_counter() - start, quick))
    return summary
