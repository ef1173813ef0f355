"""The one LaTeX table writer: booktabs tabulars for ``table --format latex`` and the paper tables."""

from __future__ import annotations

MISSING = "—"  # how tables show a missing value; LaTeX gets an em dash ("---")

_SPECIAL = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    MISSING: "---",
}


def escape(text: str) -> str:
    """Text made safe to place in a LaTeX table cell (a leading "[" would read as a \\\\ option)."""
    escaped = "".join(_SPECIAL.get(ch, ch) for ch in str(text))
    return "{}" + escaped if escaped.startswith("[") else escaped


def tabular(header: list[str], body: list[list[str]], left: int, groups: list[tuple[str, int]] = ()) -> str:
    """A booktabs tabular: ``left`` left-aligned columns, then right-aligned ones. Cells are LaTeX already
    (pass text through ``escape``). ``groups``, (label, width) over the right-hand columns in order, add a
    row of ``\\multicolumn`` labels with a ``\\cmidrule`` under each, when any label is not empty."""
    lines = ["\\begin{tabular}{" + "l" * left + "r" * (len(header) - left) + "}", "\\toprule"]
    if any(label for label, _ in groups):
        top, rules, start = [""] * left, [], left + 1
        for label, width in groups:
            top.append(f"\\multicolumn{{{width}}}{{c}}{{{escape(label)}}}")
            rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines += [" & ".join(top) + " \\\\", " ".join(rules)]
    lines += [" & ".join(header) + " \\\\", "\\midrule"]
    lines += [" & ".join(row) + " \\\\" for row in body]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)
