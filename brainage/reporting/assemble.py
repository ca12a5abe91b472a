"""Build ``OUTPUT_DIR/reports/``: the cohort report and one page per participant.

The layout (``reports/layout.yaml``) says which sections, figures and tables each
page has and in which order; :mod:`brainage.reporting.cohort` and
:mod:`brainage.reporting.participant` fill the text and tables; the figure
functions of :mod:`brainage.reporting.figures` draw SVG files that are inlined as
``data:`` URIs; jinja2 renders the shipped templates with the CSS inlined. A page
therefore opens offline, alone, in any browser.

A figure that cannot be drawn is listed in the page's "Errors" section with the
reason, and the rest is written. The pages are rendered into a temporary folder
beside ``reports/`` and moved into place only when all of them are complete, so an
existing report is never replaced by a partial one.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from .. import __version__
from ..exceptions import UsageError
from ..resources import data_dir
from .cohort import cohort_context
from .data import load_report_data
from .participant import page_name, participant_context

logger = logging.getLogger(__name__)

__all__ = ["COHORT_FIGURES", "PARTICIPANT_FIGURES", "ReportOutputs", "build_reports", "load_layout"]


@dataclass
class ReportOutputs:
    """What :func:`build_reports` wrote."""

    directory: Path
    cohort: Path
    participants: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    seconds: float = 0.0
    figure_seconds: float = 0.0

    def summary(self) -> list[str]:
        """Console lines."""
        size = self.cohort.stat().st_size / 1e6
        lines = [
            f"reports ({self.seconds:.0f} s): {self.cohort} ({size:.1f} MB) and "
            f"{len(self.participants)} participant page(s) in {self.directory}"
        ]
        if self.errors:
            lines.append(
                f"  {len(self.errors)} part(s) could not be drawn; see the Errors section of the report"
            )
        return lines


# ----------------------------------------------------------------------------- figures


def _fig(name):
    from . import figures

    return getattr(figures, name)


class _Unavailable(Exception):
    """A figure whose input this run does not produce (not an error: the section says so)."""


def _need(value, what):
    if value is None:
        raise _Unavailable(f"{what} is not part of this run")
    return value


def _region_map(data, ctx, path):
    from ..atlases import load_atlas

    regions = _need(data.table("regions"), "regions.tsv")
    rows = regions[(regions["level"] == "region") & regions["index"].notna()]
    anat = rows[rows["modality"].astype(str).str.startswith("anat")]
    rows = anat if len(anat) else rows
    if not len(rows):  # whole-brain inputs only (kind tissue, whole_brain): nothing to paint
        raise _Unavailable("a brain map of the regions needs an input with atlas regions (kind "
                           "regional, parcels, connectivity on a volume atlas, or maps); this run's "
                           "regions.tsv has whole-brain measures only")
    atlas_id = str(rows["atlas"].iloc[0])
    atlas = load_atlas(atlas_id)
    if atlas.image is None:
        raise _figure_error("region_map", f"atlas {atlas_id} is a coordinate atlas: no image to paint")
    values = pd.DataFrame({"index": rows["index"].astype(float).astype(int), "value": rows["attribution"]})
    return _fig("region_brain_map")(
        values, atlas.image, path, title=f"{rows['modality'].iloc[0]}: |attribution| (y), {atlas_id}"
    )


def _figure_error(name, reason):
    from ..exceptions import ReportFigureError

    return ReportFigureError(f"{name}: {reason}")


def _pid_map(atom):
    def draw(data, ctx, path):
        from ..atlases import load_atlas

        table = _need(data.table("regions_pid"), "regions_pid.tsv")
        rows = table[table["index"].notna() & table[atom].notna()]
        if not len(rows):
            raise _figure_error(f"region_pid_{atom}", f"regions_pid.tsv has no region with {atom}")
        atlas_id = str(rows["atlas"].iloc[0])
        atlas = load_atlas(atlas_id)
        values = pd.DataFrame({"index": rows["index"].astype(float).astype(int), "value": rows[atom]})
        return _fig("region_brain_map")(values, atlas.image, path, title=f"{atom} (bits), {atlas_id}")

    return draw


#: Cohort figures: layout id → function(data, context, path).
COHORT_FIGURES = {
    "age_distribution": lambda d, c, p: _fig("age_distribution")(
        _need(d.primary_predictions(), "predictions.tsv"), p, control_labels=d.control_labels
    ),
    "predicted_vs_age": lambda d, c, p: _fig("predicted_vs_age")(
        _need(d.primary_predictions(), "predictions.tsv"), p, control_labels=d.control_labels
    ),
    "model_accuracy": lambda d, c, p: _fig("model_accuracy")(d.metrics, p),
    "gap_vs_age": lambda d, c, p: _fig("gap_vs_age")(
        _need(d.primary_predictions(), "predictions.tsv"), p, control_labels=d.control_labels
    ),
    "gap_by_group": lambda d, c, p: _fig("gap_by_group")(
        _need(d.primary_predictions(), "predictions.tsv"), p, control_labels=d.control_labels
    ),
    "site_forest": lambda d, c, p: _fig("site_forest")(_need(d.table("groups"), "groups.tsv"), p),
    "literature_comparison": lambda d, c, p: _fig("literature_comparison")(c["literature_rows"], p),
    "pid_atoms": lambda d, c, p: _fig("pid_atoms")(
        _need((d.pid or {}).get("held_out"), "PID atoms (pid.json)"),
        p,
        modalities=tuple(str(d.pid["held_out"].get("pair", "anat|func")).split("|")[:2]),
        per_fold=d.pid.get("per_fold"),
    ),
    "contributions_by_group": lambda d, c, p: _fig("contributions_by_group")(
        _need(d.table("contributions"), "contributions.tsv"), p, control_labels=d.control_labels
    ),
    "region_map": _region_map,
    "region_bars": lambda d, c, p: _fig("region_bars")(_need(d.table("regions"), "regions.tsv"), p),
    "region_pid_struct": _pid_map("U_struct"),
    "region_pid_func": _pid_map("U_func"),
    "region_pid_redundant": _pid_map("R"),
}

#: Participant figures: layout id → function(participant context, path).
PARTICIPANT_FIGURES = {
    "participant_position": lambda c, p: _fig("participant_position")(
        c["inputs"]["controls"], c["inputs"]["row"], p
    ),
    "participant_contributions": lambda c, p: _fig("participant_contributions")(
        _need(c["inputs"].get("contributions"), "this participant's contributions"), p
    ),
    "participant_deviations": lambda c, p: _fig("participant_deviations")(
        _need(c["inputs"].get("deviations"), "this participant's regional deviations"), p
    ),
}


def _data_uri(path: Path) -> str:
    kind = {".svg": "image/svg+xml", ".png": "image/png"}.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _draw(registry, spec, args, tmp: Path, errors: list, where: str) -> dict:
    fid = spec["id"]
    func = registry.get(fid)
    if func is None:
        errors.append({"where": where, "what": fid, "reason": f"unknown figure id '{fid}' in layout.yaml"})
        return None
    path = tmp / f"{fid}.svg"
    try:
        func(*args, path)
        uri = _data_uri(path)
    except _Unavailable as exc:
        return {"id": fid, "src": None, "caption": f"Not shown: {exc}."}
    except Exception as exc:
        logger.warning("%s: figure %s not drawn: %s", where, fid, exc)
        errors.append({"where": where, "what": fid, "reason": f"{type(exc).__name__}: {exc}"})
        return None
    finally:
        path.unlink(missing_ok=True)
    return {"id": fid, "src": uri, "caption": spec.get("caption", "")}


# ----------------------------------------------------------------------------- layout


def load_layout(path=None) -> dict:
    """Read and check the layout spec (``reports/layout.yaml`` by default).

    Raises
    ------
    UsageError
        The file is not a mapping with ``cohort`` and ``participant`` pages whose sections
        have an ``id`` and a ``title``.
    """
    path = Path(path) if path else data_dir("reports") / "layout.yaml"
    try:
        layout = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"report layout {path} cannot be read ({exc}); reinstall brainage") from None
    for page in ("cohort", "participant"):
        sections = (layout or {}).get(page, {}).get("sections") if isinstance(layout, dict) else None
        if not isinstance(sections, list) or not all(
            isinstance(s, dict) and "id" in s and "title" in s for s in sections
        ):
            raise UsageError(
                f"report layout {path}: '{page}.sections' must be a list of sections with an "
                "id and a title; restore the shipped layout.yaml"
            )
    return layout


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("reports"))),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _sections(page_layout, ctx, registry, args, tmp, errors, where):
    out = []
    for spec in page_layout["sections"]:
        drawn = [_draw(registry, fs, args, tmp, errors, where) for fs in spec.get("figures", [])]
        figures = [f for f in drawn if f is not None and f["src"]]
        unavailable = [f["caption"] for f in drawn if f is not None and not f["src"]]
        tables = [ctx["tables"].get(t) for t in spec.get("tables", [])]
        text = [p for key in spec.get("text", []) for p in ctx["text"].get(key, [])]
        images = [img for key in spec.get("images", []) for img in ctx.get("images", {}).get(key, [])]
        out.append(
            {
                "id": spec["id"],
                "title": spec["title"],
                "text": text,
                "figures": figures,
                "unavailable": unavailable,
                "tables": [t for t in tables if t is not None],
                "images": images,
            }
        )
    return out


def _qc_images(items, errors, where) -> list[dict]:
    out = []
    for path, caption in items:
        try:
            out.append({"src": _data_uri(Path(path)), "caption": caption})
        except OSError as exc:
            errors.append({"where": where, "what": Path(path).name, "reason": f"cannot be read ({exc})"})
    return out


# ----------------------------------------------------------------------------- build


def _controls(pred: pd.DataFrame, labels) -> pd.DataFrame:
    ctrl = pred[pred["group"].astype(str).isin(set(labels))]
    return ctrl[ctrl["gap_corrected"].notna()]


def _page_rows(pred: pd.DataFrame):
    for _, r in pred.iterrows():
        ses = r["session"] if isinstance(r["session"], str) else None
        yield (str(r["participant_id"]), ses), r


def _participant_pages(output_dir, layout, keys, stage, meta, data=None) -> tuple[list, list, float]:
    """Render the pages of ``keys`` into ``stage``; return the file names, the errors and figure seconds.

    Runs in the calling process or in a worker (which loads the group outputs itself).
    """
    data = data if data is not None else load_report_data(output_dir)
    spec = load_layout(layout)
    template = _environment().get_template("participant.html.j2")
    css = (data_dir("reports") / "report.css").read_text(encoding="utf-8")
    pred = data.primary_predictions()
    controls = _controls(pred, data.control_labels)
    scratch = Path(tempfile.mkdtemp(prefix=".figures-", dir=stage))
    wanted = set(keys)
    written, errors, seconds = [], [], 0.0
    for key, r in _page_rows(pred):
        if key not in wanted:
            continue
        name = page_name(*key)
        where = name[:-5]
        perrors: list = []
        try:
            pctx = participant_context(r, data, controls)
            pctx["images"] = {"qc": _qc_images(pctx["inputs"]["qc_images"], perrors, where)}
            t0 = time.perf_counter()
            sections = _sections(
                spec["participant"], pctx, PARTICIPANT_FIGURES, (pctx,), scratch, perrors, where
            )
            seconds += time.perf_counter() - t0
            html = template.render(
                meta=meta,
                css=css,
                title=spec["participant"].get("title", ""),
                heading=pctx["title"],
                sections=sections,
                errors=perrors,
                group=str(r["group"]),
            )
        except Exception as exc:
            logger.warning("%s: page not written: %s", where, exc)
            errors.append({"where": where, "what": "page", "reason": f"{type(exc).__name__}: {exc}"})
            continue
        (Path(stage) / name).write_text(html, encoding="utf-8")
        written.append(name)
        errors.extend(perrors)
    shutil.rmtree(scratch, ignore_errors=True)
    return written, errors, seconds


#: Fewest pages for which worker processes are worth their start-up (a few seconds each).
PARALLEL_PAGES = 24


def _render_pages(output_dir, layout, keys, stage, meta, data, nprocs) -> tuple[list, list, float]:
    nprocs = max(1, min(nprocs, len(keys) // (PARALLEL_PAGES // 2) or 1))
    if nprocs == 1:
        return _participant_pages(output_dir, layout, keys, stage, meta, data=data)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = [keys[i::nprocs] for i in range(nprocs)]
    written, errors, seconds = [], [], 0.0
    with ProcessPoolExecutor(nprocs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(_participant_pages, output_dir, layout, chunk, stage, meta) for chunk in chunks
        ]
        for future in futures:
            w, e, t = future.result()
            written += w
            errors += e
            seconds += t
    order = {page_name(*k): i for i, k in enumerate(keys)}
    return sorted(written, key=order.get), errors, seconds


def build_reports(
    output_dir, *, layout=None, participants: bool = True, nprocs: int | None = None
) -> ReportOutputs:
    """Write ``OUTPUT_DIR/reports/cohort.html`` and ``sub-<label>[_ses-<label>].html``.

    Parameters
    ----------
    output_dir : path-like
        The derivatives root whose ``group/`` holds a finished group run.
    layout : path-like, optional
        A layout spec other than the shipped ``reports/layout.yaml``.
    participants : bool
        Also write a page per participant (otherwise the existing pages are left as they are).
    nprocs : int, optional
        Worker processes for the participant pages (default: the CPUs, at most 4; one below
        :data:`PARALLEL_PAGES` pages).

    Returns
    -------
    ReportOutputs

    Raises
    ------
    UsageError
        No finished group run in ``OUTPUT_DIR``, or an unreadable layout.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    try:
        data = load_report_data(output_dir)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    spec = load_layout(layout)
    css = (data_dir("reports") / "report.css").read_text(encoding="utf-8")
    final = output_dir / "reports"
    final.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".reports-", dir=output_dir))
    nprocs = nprocs or min(os.cpu_count() or 1, 4)
    try:
        pred = data.primary_predictions()
        keys = [key for key, _ in _page_rows(pred)] if participants and pred is not None else []
        pages = {key: page_name(*key) for key in keys}
        meta = {
            "version": __version__,
            "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "output_dir": str(output_dir.resolve()),
            "mode": data.mode,
            "model": data.primary,
        }
        errors = [{"where": "cohort", "what": "input", "reason": p} for p in data.problems]
        ctx = cohort_context(data, pages)
        t0 = time.perf_counter()
        sections = _sections(spec["cohort"], ctx, COHORT_FIGURES, (data, ctx), stage, errors, "cohort")
        figure_seconds = time.perf_counter() - t0
        written, page_errors, page_seconds = ([], [], 0.0)
        if keys:
            written, page_errors, page_seconds = _render_pages(
                output_dir, layout, keys, stage, meta, data, nprocs
            )
        errors.extend(page_errors)
        html = (
            _environment()
            .get_template("cohort.html.j2")
            .render(
                meta=meta,
                css=css,
                title=spec["cohort"].get("title", ""),
                sections=sections,
                errors=errors,
                pages=[{"href": name, "text": name[:-5]} for name in written],
            )
        )
        (stage / "cohort.html").write_text(html, encoding="utf-8")
        # Everything is complete: move into place (participant pages first, the cohort report last).
        for stale in final.glob("sub-*.html") if participants else ():
            if stale.name not in written:  # a participant no longer in the group outputs
                stale.unlink()
        for name in written:
            os.replace(stage / name, final / name)
        os.replace(stage / "cohort.html", final / "cohort.html")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ReportOutputs(
        directory=final,
        cohort=final / "cohort.html",
        participants=[final / n for n in written],
        errors=errors,
        seconds=time.perf_counter() - start,
        figure_seconds=figure_seconds + page_seconds,
    )
