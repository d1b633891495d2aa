"""The HTML report of an audit: one self-contained page.

The page has inline CSS, the figures as ``data:image/png`` URIs and no script at all; a
Content-Security-Policy meta tag forbids scripts, fonts and every external load, so the
report can be mailed or opened offline. Every string taken from the result (the model name,
the data source, class names, warnings...) is HTML-escaped, so it shows as text. Each
stage writes its own section (:meth:`~vulnscope.audit.Stage.report`) with the helpers of
:class:`~vulnscope.audit.stage.Report`; this module lays them out.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from typing_extensions import override

from vulnscope._io import write_bytes_atomic
from vulnscope.audit.codec import to_json
from vulnscope.audit.record import AuditResult, Verdict
from vulnscope.audit.stage import Report, ReportSection, registered_stages

__all__ = ["render_report", "write_report"]

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LEVELS = {"high": "high", "moderate": "moderate", "low": "low"}
_NULL = "—"

_STYLE = """
body { margin: 0; background: #f6f7f9; color: #1d2330;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  line-height: 1.5; }
main { max-width: 960px; margin: 0 auto; padding: 2rem 1.5rem 4rem; background: #fff; }
h1 { margin: 0 0 .25rem; font-size: 1.8rem; overflow-wrap: anywhere; }
h2 { margin-top: 2.5rem; padding-bottom: .25rem; border-bottom: 1px solid #dde1e8; }
h3 { margin-bottom: .5rem; }
.subtitle { margin: 0; color: #5b6475; }
.verdict { margin: 1.5rem 0; padding: 1rem 1.25rem; border-left: 6px solid #8a93a3;
  background: #f3f4f7; border-radius: 4px; }
.verdict.high { border-color: #c62828; background: #fdecea; }
.verdict.moderate { border-color: #e09b00; background: #fff6e0; }
.verdict.low { border-color: #2e7d32; background: #e9f5ea; }
.verdict p { margin: .5rem 0 0; }
.badge { display: inline-block; margin-right: .5rem; padding: .1rem .6rem; border-radius: 1rem;
  color: #fff; background: #8a93a3; font-size: .8rem; font-weight: 700;
  text-transform: uppercase; letter-spacing: .05em; }
.badge.high { background: #c62828; }
.badge.moderate { background: #e09b00; }
.badge.low { background: #2e7d32; }
table { border-collapse: collapse; margin: .75rem 0; font-size: .92rem;
  font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #dde1e8; padding: .3rem .65rem; text-align: left;
  vertical-align: top; overflow-wrap: anywhere; }
thead th { background: #f3f4f7; }
figure { margin: 1rem 0; }
img { max-width: 100%; height: auto; }
.note { color: #8a5a00; font-style: italic; }
"""


def render_report(result: AuditResult | Mapping[str, Any], directory: str | Path) -> str:
    """The report of an audit as one self-contained HTML document.

    Args:
        result: the audit's result, or its ``results.json`` record (parsed); stages
            absent from it get no section.
        directory: where the result's figures (``figures``, relative names) lie. A figure
            file that is missing, not a PNG or outside ``directory`` is left out, with a
            note in its place.

    Returns:
        The page, with every figure embedded as a ``data:image/png`` URI.

    """
    if not isinstance(result, AuditResult):
        result = AuditResult.from_dict(result)
    page = _Page(result, Path(directory))
    stages = registered_stages()
    sections: list[ReportSection] = []
    for name, value in result.results.items():
        section = stages[name].report(value, page)
        if section is None:
            continue
        if sections and sections[-1].title == section.title:
            last = sections[-1]
            section = ReportSection(
                last.title,
                f"{last.body}\n{section.body}",
                tuple(dict.fromkeys(last.figures + section.figures)),
                last.notes + section.notes,
            )
            sections[-1] = section
        else:
            sections.append(section)
    name = _text(result.model.name)
    parts = [_header(result), _verdict(result.verdict), _key_figures(result, page)]
    parts += [page.render(section) for section in sections]
    parts += [_metadata(result.model.metadata), _warnings(result), _settings(result)]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>vulnscope audit: {name}</title>\n<style>{_STYLE}</style>\n</head>\n"
        "<body>\n<main>\n" + "\n".join(part for part in parts if part) + "\n</main>\n</body>\n"
        "</html>\n"
    )


def write_report(result: AuditResult | Mapping[str, Any], directory: str | Path) -> Path:
    """Render the report and write it atomically to ``directory/report.html`` (UTF-8).

    Returns:
        The path written.

    """
    page = render_report(result, directory)
    return write_bytes_atomic(Path(directory) / "report.html", page.encode("utf-8"))


def _text(value: Any) -> str:
    """``value`` as HTML text, quotes included, so it can never become markup."""
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    """An integer in full, a float to 3 significant digits, ``—`` for null or non-finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return _NULL
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def _seconds(value: Any) -> str:
    """A duration in seconds to 3 significant digits, ``—`` for null."""
    text = _number(value)
    return text if text == _NULL else f"{text} s"


def _percent(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal, ``—`` for null."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return _NULL if value is None else str(value)
    return f"{100 * value:.1f}%"


def _plain(value: Any) -> str:
    """A setting or metadata value as text: strings as they are, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> str:
    """A table whose header and cells are all escaped here."""
    head = ""
    if header is not None:
        head = "<thead><tr>" + "".join(f"<th>{_text(cell)}</th>" for cell in header)
        head += "</tr></thead>"
    body = "".join(
        "<tr>" + "".join(f"<td>{_text(cell)}</td>" for cell in row) + "</tr>\n" for row in rows
    )
    return f"<table>{head}<tbody>\n{body}</tbody></table>"


def _section(title: str, *parts: str) -> str:
    """A titled section of the page; ``title`` is fixed text, ``parts`` are HTML."""
    return f"<section>\n<h2>{title}</h2>\n" + "\n".join(p for p in parts if p) + "\n</section>"


def _figure(figures: Mapping[str, str], directory: Path, key: str) -> str:
    """The figure ``key`` as an inline image, or a note saying why not."""
    name = figures.get(key)
    if name is None:
        return ""
    path = directory / str(name)
    if not path.resolve().is_relative_to(directory.resolve()):
        return f'<p class="note">Figure {_text(name)} lies outside the report folder.</p>'
    try:
        data = path.read_bytes()
    except OSError:
        return f'<p class="note">Figure {_text(name)} was not found.</p>'
    if not data.startswith(_PNG_SIGNATURE):
        return f'<p class="note">Figure {_text(name)} is not a PNG file.</p>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<figure><img alt="{_text(key)}" src="data:image/png;base64,{encoded}"></figure>'


class _Page(Report):
    """The helpers a stage's section uses, over one result and its figure directory."""

    def __init__(self, result: AuditResult, directory: Path) -> None:
        self._result, self._directory = result, directory

    def figure(self, key: str) -> str:
        """The figure ``key`` as an inline image, or a note saying why it is missing."""
        return _figure(self._result.figures, self._directory, key)

    @override
    def table(self, header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
        return _table(header, rows)

    @override
    def text(self, value: Any) -> str:
        return _text(value)

    @override
    def number(self, value: Any) -> str:
        return _number(value)

    @override
    def percent(self, value: Any) -> str:
        return _percent(value)

    @property
    @override
    def class_names(self) -> Sequence[str] | None:
        return self._result.data.class_names

    def render(self, section: ReportSection) -> str:
        """A stage's (or consecutive stages') section: figures, body, each note once."""
        places: dict[str, list[str]] = {}
        for text, where in section.notes:
            places.setdefault(text, [])
            if where not in places[text]:
                places[text].append(where)
        notes = "".join(
            f"<li>{_text('; '.join(where))}: {_text(text)}</li>" for text, where in places.items()
        )
        figures = [self.figure(key) for key in section.figures]
        return _section(section.title, *figures, section.body, f"<ul>{notes}</ul>" if notes else "")


def _header(result: AuditResult) -> str:
    """Title and the one-line subtitle: data, samples, version, date."""
    subtitle = " · ".join(
        [
            _text(result.data.source),
            f"{_text(_number(result.data.samples))} samples",
            f"vulnscope {_text(result.vulnscope_version)}",
            f"created {_text(result.created)}",
        ]
    )
    return (
        f"<header>\n<h1>Robustness audit: {_text(result.model.name)}</h1>\n"
        f'<p class="subtitle">{subtitle}</p>\n</header>'
    )


def _verdict(verdict: Verdict) -> str:
    """The level as a coloured badge, the headline in bold, then the paragraph."""
    level = _LEVELS.get(verdict.level, "unknown")
    return (
        f'<section class="verdict {level}">\n'
        f'<span class="badge {level}">{_text(verdict.level)}</span> '
        f"<strong>{_text(verdict.headline)}</strong>\n<p>{_text(verdict.text)}</p>\n"
        "</section>"
    )


def _key_figures(result: AuditResult, page: _Page) -> str:
    """The handful of numbers a reader wants first."""
    rows = [("clean accuracy", _percent(result.clean_accuracy))]
    stages = registered_stages()
    for name, value in result.results.items():
        rows += stages[name].key_figures(value, page)
    return _section("Key figures", _table(None, rows))


def _metadata(metadata: Any) -> str:
    """What ``vulnscope defend`` stored with the model, as a key/value table."""
    if metadata is None:
        return ""
    items = metadata.items() if isinstance(metadata, dict) else [("metadata", metadata)]
    return _section("Model metadata", _table(None, [(k, _plain(v)) for k, v in items]))


def _warnings(result: AuditResult) -> str:
    """The result's warnings as a list, or "none"."""
    items = "".join(f"<li>{_text(warning)}</li>" for warning in result.warnings)
    return _section("Warnings", f"<ul>{items}</ul>" if items else "<p>none</p>")


def _settings(result: AuditResult) -> str:
    """The model, the settings of the run and the time each stage took."""
    model, data, timing = result.model, result.data, result.timing
    rows: list[tuple[str, str]] = [
        ("model kind", model.kind),
        ("parameters", _NULL if model.parameters is None else f"{model.parameters:,}"),
        ("classes", _number(model.num_classes)),
        ("input shape", " × ".join(str(size) for size in data.input_shape)),
    ]
    settings = to_json(result.settings)
    budgets = settings.pop("budgets", None)
    rows += [(key, _plain(value)) for key, value in settings.items()]
    for norm, chosen in (budgets or {}).items():
        rows.append((f"budgets ({norm})", f"{', '.join(chosen['labels'])}: {chosen['how']}"))
    rows.append(("total time", _seconds(timing.total)))
    rows += [(f"time: {stage}", _seconds(s)) for stage, s in timing.stages.items()]
    return _section("Settings and timing", _table(None, rows))
