"""The HTML report of ``vulnscope audit``: one self-contained page rendered from ``results.json``.

The page has inline CSS, the figures as ``data:image/png`` URIs and no script at all; a
Content-Security-Policy meta tag forbids scripts, fonts and every external load, so the
report can be mailed or opened offline. Every string taken from the record (the model name,
the data source, class names, warnings...) is HTML-escaped, so it shows as text.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Iterable, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any

from vulnscope._io import write_bytes_atomic

__all__ = ["render_report", "write_report"]

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NORMS = {"linf": "L∞", "l2": "L2"}
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


def render_report(record: dict[str, Any], directory: str | Path) -> str:
    """The report of an audit as one self-contained HTML document.

    Args:
        record: the audit's ``results.json`` (schema 3); stages absent from it get no section.
        directory: where the record's figures (``record["figures"]``, relative names) lie.
            A figure file that is missing, not a PNG or outside ``directory`` is left out,
            with a note in its place.

    Returns:
        The page, with every figure embedded as a ``data:image/png`` URI.

    """
    directory = Path(directory)
    name = _text(record["model"]["name"])
    parts = [_header(record), _verdict(record["verdict"]), _key_figures(record)]
    parts += [
        render(record, directory)
        for key, render in _STAGE_SECTIONS.items()
        if record.get(key) is not None
    ]
    parts += [_metadata(record["model"].get("metadata")), _warnings(record), _settings(record)]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>vulnscope audit: {name}</title>\n<style>{_STYLE}</style>\n</head>\n"
        "<body>\n<main>\n" + "\n".join(part for part in parts if part) + "\n</main>\n</body>\n"
        "</html>\n"
    )


def write_report(record: dict[str, Any], directory: str | Path) -> Path:
    """Render the report and write it atomically to ``directory/report.html`` (UTF-8).

    Returns:
        The path written.

    """
    page = render_report(record, directory)
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


def _figure(record: dict[str, Any], directory: Path, key: str) -> str:
    """The figure ``key`` of the record as an inline image, or a note saying why not."""
    name = record.get("figures", {}).get(key)
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


def _header(record: dict[str, Any]) -> str:
    """Title and the one-line subtitle: data, samples, version, date."""
    data = record["data"]
    subtitle = " · ".join(
        [
            _text(data["source"]),
            f"{_text(_number(data['samples']))} samples",
            f"vulnscope {_text(record['vulnscope_version'])}",
            f"created {_text(record['created'])}",
        ]
    )
    return (
        f"<header>\n<h1>Robustness audit: {_text(record['model']['name'])}</h1>\n"
        f'<p class="subtitle">{subtitle}</p>\n</header>'
    )


def _verdict(verdict: dict[str, Any]) -> str:
    """The level as a coloured badge, the headline in bold, then the paragraph."""
    level = _LEVELS.get(str(verdict["level"]), "unknown")
    return (
        f'<section class="verdict {level}">\n'
        f'<span class="badge {level}">{_text(verdict["level"])}</span> '
        f"<strong>{_text(verdict['headline'])}</strong>\n<p>{_text(verdict['text'])}</p>\n"
        "</section>"
    )


def _key_figures(record: dict[str, Any]) -> str:
    """The handful of numbers a reader wants first."""
    rows = [("clean accuracy", _percent(record["clean_accuracy"]))]
    for norm, curve in (record.get("robustness") or {}).items():
        for eps, accuracy in zip(curve["epsilons"], curve["accuracy"], strict=False):
            if eps > 0:  # at eps 0 the curve repeats the clean accuracy
                label = f"robust accuracy, {_NORMS.get(norm, norm)} ε = {_number(eps)}"
                rows.append((label, _percent(accuracy)))
    if (minimal := record.get("minimal_perturbations")) is not None:
        rows.append(("median minimal L2 perturbation", _number(minimal["median"])))
    if (spectra := record.get("spectra")) is not None:
        top = spectra["fisher"]["eigenvalue_median"]
        rows.append(("top Fisher eigenvalue", _number(top[0] if top else None)))
    if (amplification := record.get("amplification")) is not None:
        rows.append(("end-to-end amplification", _number(amplification["end_to_end_median"])))
    if (rg := record.get("rg")) is not None:
        relevant = ", ".join(_number(layer) for layer in rg["relevant_layers"]) or "none"
        rows.append(("relevant RG layers", relevant))
    return _section("Key figures", _table(None, rows))


def _robustness(record: dict[str, Any], directory: Path) -> str:
    """Robust accuracy per budget, which attack broke how many points, per-budget warnings."""
    attacks = list(record["settings"]["attacks"])
    parts = [_figure(record, directory, "robust_accuracy")]
    for norm, curve in record["robustness"].items():
        by_eps = {evaluation["eps"]: evaluation for evaluation in curve["evaluations"]}
        rows = []
        for eps, accuracy in zip(curve["epsilons"], curve["accuracy"], strict=False):
            broken = by_eps.get(eps, {}).get("broken_by", {})
            counts = [_number(broken.get(attack)) if broken else _NULL for attack in attacks]
            rows.append([_number(eps), _percent(accuracy), *counts])
        header = ["ε", "robust accuracy", *(f"broken by {attack}" for attack in attacks)]
        notes = [
            f"<li>ε = {_text(_number(evaluation['eps']))}: {_text(warning)}</li>"
            for evaluation in curve["evaluations"]
            for warning in evaluation.get("warnings", [])
        ]
        parts += [f"<h3>{_text(_NORMS.get(norm, norm))} budgets</h3>", _table(header, rows)]
        parts.append(f"<ul>{''.join(notes)}</ul>" if notes else "")
    return _section("Robust accuracy", *parts)


def _minimal(record: dict[str, Any], directory: Path) -> str:
    """Quantiles of the smallest L2 perturbation that changes the class, and who found it."""
    minimal = record["minimal_perturbations"]
    summary = (
        f"<p>{_text(minimal['n'])} samples, {_text(minimal['n_clean_correct'])} correctly "
        f"classified; no adversarial example found for {_text(minimal['n_not_found'])}. "
        f"Mean size of those found: {_text(_number(minimal['mean_found']))}.</p>"
    )
    quantiles = _table(
        ["quantile", "L2 size"], [(q, _number(v)) for q, v in minimal["quantiles"].items()]
    )
    found = _table(["attack", "found"], [(a, _number(n)) for a, n in minimal["found_by"].items()])
    figure = _figure(record, directory, "minimal_perturbations")
    return _section("Minimal perturbations", figure, summary, quantiles, found)


def _spectra(record: dict[str, Any], directory: Path) -> str:
    """Top eigenvalues of the input Fisher and input Hessian (medians over samples)."""
    spectra = record["spectra"]
    fisher, hessian = spectra["fisher"], spectra["hessian"]
    summary = (
        f"<p>Medians over {_text(spectra['samples'])} samples. Fisher trace "
        f"{_text(_number(fisher['trace_median']))}; Hessian Frobenius norm "
        f"{_text(_number(hessian['frobenius_median']))}.</p>"
    )
    pairs = zip_longest(fisher["eigenvalue_median"], hessian["eigenvalue_median"])
    rows = [(rank, _number(f), _number(h)) for rank, (f, h) in enumerate(pairs, start=1)]
    table = _table(["rank", "Fisher eigenvalue", "Hessian eigenvalue"], rows)
    return _section("Curvature spectra", _figure(record, directory, "spectra"), summary, table)


def _amplification(record: dict[str, Any], directory: Path) -> str:
    """How much each block stretches a small input change (medians over samples)."""
    amp = record["amplification"]
    summary = f"<p>End-to-end amplification: {_text(_number(amp['end_to_end_median']))}.</p>"
    columns = zip_longest(
        amp["blocks"],
        amp["singular_value_median"],
        amp["cumulative_median"],
        amp["growth_fisher_median"],
        amp["growth_random_median"],
    )
    rows = [(block, *(_number(v) for v in values)) for block, *values in columns]
    header = ["block", "top singular value", "cumulative", "growth (Fisher)", "growth (random)"]
    figure = _figure(record, directory, "amplification")
    return _section("Layer amplification", figure, summary, _table(header, rows))


def _dangerous(record: dict[str, Any], directory: Path) -> str:
    """The predicted classes of originals, Fisher-perturbed and adversarial examples."""
    dangerous = record["dangerous"]
    names = record["data"].get("class_names")

    def label(index: Any) -> str:
        known = names is not None and isinstance(index, int) and 0 <= index < len(names)
        return str(names[index]) if known else _number(index)

    summary = (
        "<p>Each correctly classified input is moved along the most dangerous direction "
        "(±v₁ of the input Fisher information) just past the decision boundary "
        f"(median L2 step {_text(_number(dangerous['fisher_l2']))}, not clipped to the "
        "pixel range), and attacked by APGD-CE at L∞ ε = "
        f"{_text(_number(dangerous['linf_eps']))}. The classes predicted on each:</p>"
    )
    classes = ("label", "fisher", "adversarial")
    rows = [
        (row["index"], *(label(row[key]) for key in classes),
         _number(row.get("fisher_l2")), _number(row["adversarial_linf"]))
        for row in dangerous["rows"]
    ]  # fmt: skip
    header = ["index", "label", "Fisher", "adversarial", "Fisher step (L2)",
              "adversarial L∞"]  # fmt: skip
    figure = _figure(record, directory, "dangerous")
    return _section("Dangerous perturbations", figure, summary, _table(header, rows))


def _rg(record: dict[str, Any], directory: Path) -> str:
    """The renormalisation-group analysis: per-layer leading eigenvalues and relevance."""
    rg = record["rg"]
    summary, relevant = rg["summary"], set(rg["relevant_layers"])
    intro = (
        f"<p>Depth {_text(rg['depth'])}, widths {_text(_plain(rg['widths']))}, "
        f"{_text(rg['operators']['count'])} operators, {_text(summary['inputs'])} inputs. "
        f"Product norm {_text(_number(summary['product_norm_mean']))} ± "
        f"{_text(_number(summary['product_norm_stderr']))}.</p>"
    )
    rows = [
        (
            layer["layer"],
            layer["kind"],
            f"{_number(layer['leading_mean'])} ± {_number(layer['leading_stderr_over_inputs'])}",
            _number(layer["leading_jackknife_median"]),
            _number(layer["singular_mean"]),
            _number(layer["relevant_mean"]),
            "yes" if layer["layer"] in relevant else "no",
        )
        for layer in summary["layers"]
    ]
    header = [
        "layer",
        "kind",
        "leading eigenvalue",
        "jackknife median",
        "singular value",
        "relevant operators",
        "relevant",
    ]
    distance = summary["class_change_distance_median"]
    found = summary["class_change_found_fraction"]
    changes = _table(
        ["direction", "median distance to a class change", "found"],
        [(key, _number(value), _percent(found.get(key))) for key, value in distance.items()],
    )
    return _section(
        "Renormalisation-group analysis",
        _figure(record, directory, "rg_layers"),
        _figure(record, directory, "rg_directions"),
        intro,
        _table(header, rows),
        changes,
    )


_STAGE_SECTIONS: dict[str, Callable[[dict[str, Any], Path], str]] = {
    "robustness": _robustness,
    "minimal_perturbations": _minimal,
    "spectra": _spectra,
    "amplification": _amplification,
    "dangerous": _dangerous,
    "rg": _rg,
}


def _metadata(metadata: Any) -> str:
    """What ``vulnscope defend`` stored with the model, as a key/value table."""
    if metadata is None:
        return ""
    items = metadata.items() if isinstance(metadata, dict) else [("metadata", metadata)]
    return _section("Model metadata", _table(None, [(k, _plain(v)) for k, v in items]))


def _warnings(record: dict[str, Any]) -> str:
    """The record's warnings as a list, or "none"."""
    warnings = record.get("warnings") or []
    items = "".join(f"<li>{_text(warning)}</li>" for warning in warnings)
    return _section("Warnings", f"<ul>{items}</ul>" if items else "<p>none</p>")


def _settings(record: dict[str, Any]) -> str:
    """The model, the settings of the run and the time each stage took."""
    model, data, timing = record["model"], record["data"], record.get("timing") or {}
    parameters = model.get("parameters")
    rows: list[tuple[str, str]] = [
        ("model kind", str(model.get("kind", _NULL))),
        ("parameters", _NULL if parameters is None else f"{parameters:,}"),
        ("classes", _number(model["num_classes"])),
        ("input shape", " × ".join(str(size) for size in data["input_shape"])),
    ]
    rows += [(key, _plain(value)) for key, value in record["settings"].items()]
    rows.append(("total time", _seconds(timing.get("total"))))
    rows += [(f"time: {stage}", _seconds(s)) for stage, s in timing.get("stages", {}).items()]
    return _section("Settings and timing", _table(None, rows))
