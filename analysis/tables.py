"""One table model rendered twice: Markdown for report.md and LaTeX (booktabs) for a paper.

Cells are text, numbers, signed differences or `Stat`s (mean ± std over seeds); both
renderers format a cell the same way, so the two files cannot disagree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bacl.results import write_text


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # NaN with one seed
    n: int


@dataclass(frozen=True)
class Delta:
    value: float  # a difference, printed with its sign


Cell = str | float | Stat | Delta | None


def seed_stat(values: pd.Series) -> Stat:
    values = values.dropna()
    return Stat(float(values.mean()) if len(values) else math.nan,
                float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values))


def number(x: float, digits: int = 1, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


LATEX_TEXT = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
              "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "−": "-", "–": "--"}
LATEX_MATH = {"±": r"\pm", "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "η": r"\eta", "ρ": r"\rho",
              "Δ": r"\Delta", "→": r"\to", "×": r"\times", "≥": r"\geq", "≤": r"\leq"}


def latex_escape(text: str) -> str:
    """Text for a LaTeX cell: specials escaped, the Greek and symbols our labels use in math mode."""
    return "".join(LATEX_TEXT.get(ch) or (f"${LATEX_MATH[ch]}$" if ch in LATEX_MATH else ch) for ch in text)


@dataclass
class Table:
    name: str  # file stem
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    rules: set[int] = field(default_factory=set)  # a rule above these rows
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column)
    label_columns: int = 1  # leading columns of names (left-aligned); the rest are numbers
    digits: int = 1

    def bold_best(self, rows: list[int] | None = None) -> None:
        """Bold the highest mean of every column of Stats among `rows` (all by default); ties all bold."""
        rows = list(range(len(self.rows))) if rows is None else rows
        for col in range(len(self.header)):
            means = {r: self.rows[r][col].mean for r in rows
                     if isinstance(self.rows[r][col], Stat) and math.isfinite(self.rows[r][col].mean)}
            best = max(means.values(), default=math.nan)
            winners = {r for r, m in means.items() if math.isclose(m, best, abs_tol=1e-12)}
            if len(winners) < len(means):  # a column where every row ties has no best
                self.bold |= {(r, col) for r in winners}

    def _text(self, cell: Cell) -> str:
        if isinstance(cell, Stat):
            return number(cell.mean, self.digits) + (f" ± {number(cell.std, self.digits)}"
                                                     if math.isfinite(cell.std) else "")
        if isinstance(cell, Delta):
            return number(cell.value, self.digits, signed=True)
        if isinstance(cell, float):
            return number(cell, self.digits)
        return "" if cell is None else str(cell)

    def markdown(self) -> str:
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
        align = [":---" if c < self.label_columns else "---:" for c in range(len(self.header))]
        out = [line(self.header), "| " + " | ".join(align) + " |"]
        for r, row in enumerate(self.rows):
            out.append(line([f"**{t}**" if (r, c) in self.bold and t else t
                              for c, t in enumerate(map(self._text, row))]))
        return "\n".join(out) + "\n"

    def _latex_cell(self, cell: Cell, bold: bool) -> str:
        if isinstance(cell, Stat):
            mean = number(cell.mean, self.digits)
            text = rf"\textbf{{{mean}}}" if bold else mean
            if math.isfinite(cell.std):
                text += rf"\,{{\scriptsize$\pm${number(cell.std, self.digits)}}}"
            return text
        text = latex_escape(self._text(cell))
        return rf"\textbf{{{text}}}" if bold and text else text

    def latex(self) -> str:
        spec = "l" * self.label_columns + "r" * (len(self.header) - self.label_columns)
        body = []
        for r, row in enumerate(self.rows):
            if r in self.rules:
                body.append(r"\midrule")
            body.append(" & ".join(self._latex_cell(cell, (r, c) in self.bold) for c, cell in enumerate(row))
                        + r" \\")
        return "\n".join([
            r"% requires \usepackage{booktabs}",
            r"\begin{table}[t]", r"\centering", r"\small",
            rf"\caption{{{latex_escape(self.caption)}}}", rf"\label{{tab:{self.name}}}",
            rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
            " & ".join(latex_escape(h) for h in self.header) + r" \\", r"\midrule",
            *body, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])

    def write(self, out: Path) -> list[Path]:
        paths = [out / f"{self.name}.md", out / f"{self.name}.tex"]
        write_text(paths[0], f"{self.caption}\n\n{self.markdown()}")
        write_text(paths[1], self.latex())
        return paths
