"""test.py's report of a classifier (docs/evaluation.md): the per-class table and confusion matrix it prints, and
the files it writes: report.json, confusion_matrix.png and mistakes.png (the figures: trainer/confusion.py)."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from trainer.confusion import ClassReport
from utils.errors import TemplateError
from utils.files import atomic_write, refuse_link
from utils.plots import confusion_matrix_image, image_grid, png_bytes

TABLE_CLASSES = 20  # the confusion matrix is printed as a table up to this many classes
FILES = ("confusion_matrix.png", "mistakes.png", "report.json")


def _row(label: str, cells: list[str], widths: list[int]) -> str:
    return "  ".join([label.ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells, widths[1:]))]).rstrip()


def format_report(report: ClassReport) -> str:
    """The per-class table with its averages and accuracy, then the confusion matrix when the classes are few."""
    figures = report.figures()
    width = max(12, *(len(name) for name in report.names))
    widths = [width, 9, 9, 9, 8]
    lines = [_row("", ["precision", "recall", "f1", "support"], widths)]
    for name, row in [*figures["per_class"].items(), ("macro avg", figures["macro_avg"]),
                      ("weighted avg", figures["weighted_avg"])]:
        if name == "macro avg":
            lines.append("")
        lines.append(_row(name, [f"{row[k]:.4f}" for k in ("precision", "recall", "f1")] + [str(row["support"])],
                          widths))
    lines.append(_row("accuracy", ["", "", f"{figures['accuracy']:.4f}", str(figures["samples"])], widths))
    if report.ignored:
        lines.append(f"({report.ignored} samples with a target outside 0..{len(report.names) - 1} are not counted)")
    if len(report.names) <= TABLE_CLASSES:
        cells = max(len(str(c)) for row in report.matrix for c in row)
        widths = [max(10, *(len(name) for name in report.names))] + [max(cells, len(name)) for name in report.names]
        lines += ["", "Confusion matrix (rows: true class, columns: predicted class)",
                  _row("true\\pred", report.names, widths)]
        lines += [_row(name, [str(c) for c in row], widths) for name, row in zip(report.names, report.matrix)]
    return "\n".join(lines)


def check_output_dir(folder: Path, chosen: bool = True) -> None:
    """Refuse an output folder that cannot be created or written, before the evaluation (creating nothing); and the
    default folder (not `chosen` on the command line), which lies in a run folder that may come from elsewhere,
    when it is a symbolic link."""
    if not chosen:
        refuse_link(folder, "remove it, or give --output-dir", folder=True)
    existing = next(path for path in (folder.absolute(), *folder.absolute().parents) if path.exists())
    problem = "is a file" if not existing.is_dir() else ""
    if not problem:
        try:
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as e:
            problem = f"cannot be written ({e.strerror or e})"
    if problem:
        raise TemplateError(f"Cannot write the report into '{folder}': '{existing}' {problem}. Give another folder "
                            "with --output-dir, or --no-report to print the figures only.")


def file_name(sample: str | None) -> str | None:
    """The file's name in a sample's description ("image 'data/pets/cat/001.jpg' (line 4 of labels.csv)"), for a
    caption under its picture."""
    quoted = re.search(r"'(.+)'", sample or "")  # to the last quote: a file name may hold one
    return Path(quoted.group(1)).name if quoted else None


def write_report(folder: Path, summary: dict[str, Any], report: ClassReport | None) -> list[Path]:
    """report.json (`summary`, plus the classification figures, matrix and mistakes when there is a report),
    confusion_matrix.png and mistakes.png, each written atomically into `folder`; files of an earlier report
    that this one has no figure for are removed. The paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    content: dict[str, bytes] = {}
    data = dict(summary)
    if report is not None:
        content["confusion_matrix.png"] = png_bytes(confusion_matrix_image(report.matrix, report.names))
        pictures = [m for m in report.mistakes if m.image is not None]
        if pictures:
            captions = [[file_name(m.sample) or f"#{m.index}", f"true: {report.names[m.true]}",
                         f"predicted: {report.names[m.predicted]}", f"confidence {m.confidence:.3f}"]
                        for m in pictures]
            content["mistakes.png"] = png_bytes(image_grid([m.image for m in pictures], captions))
        data["classification"] = {
            "classes": report.names, "confusion_matrix": report.matrix, "ignored": report.ignored,
            **report.figures(),
            "most_confident_mistakes": [{"index": m.index, "sample": m.sample, "true": report.names[m.true],
                                         "predicted": report.names[m.predicted], "confidence": m.confidence}
                                        for m in report.mistakes]}
    content["report.json"] = (json.dumps(data, indent=1) + "\n").encode()
    written = []
    try:
        for name in FILES:
            if name in content:
                atomic_write(folder / name, content[name])
                written.append(folder / name)
            else:
                (folder / name).unlink(missing_ok=True)
    except OSError as e:
        raise TemplateError(f"Could not write the report into '{folder}': {e.strerror or e}. Free disk space or "
                            "give another folder with --output-dir.") from None
    return written
