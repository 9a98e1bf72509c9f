"""Horizontal bar charts drawn with block characters (one group per metric)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.text import literal

PALETTE = ("cyan", "magenta", "yellow", "green")
BLOCKS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float, width: int) -> str:
    """Return a bar of `fraction` (0..1) of `width` cells with 1/8 cell resolution."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (BLOCKS[rest] if rest else "")


def render_groups(groups: list[tuple[str, list[tuple[str, float | None, str]]]],
                  width: int = 30, scale: float = 1.0) -> Text:
    """Render [(group title, [(series label, value, value text)])] as Text.

    Values are drawn relative to `scale` (1.0 for proportions); a None value is shown
    as "n/a" with no bar.
    A group with one unlabelled series is drawn on one line after its title.
    """
    text = Text()
    title_width = max((len(title) for title, _ in groups), default=0)
    for position, (title, series) in enumerate(groups):
        if position:
            text.append("\n")
        inline = len(series) == 1 and not series[0][0]
        text.append(literal(title.ljust(title_width) if inline else title, "bold"))
        for index, (label, value, shown) in enumerate(series):
            if inline:
                text.append(" ")
            else:
                text.append("\n  ")
                text.append(literal(f"{label:<3}"))
            color = PALETTE[index % len(PALETTE)]
            if value is None:
                text.append("n/a", style="dim")
                continue
            drawn = bar(value / scale if scale else 0.0, width)
            text.append(drawn.ljust(width), style=color)
            text.append(" ")
            text.append(literal(shown))
    return text


class BarChart(Static):
    """Static widget with grouped horizontal bars."""

    def plot(self, groups: list[tuple[str, list[tuple[str, float | None, str]]]],
             width: int = 30, scale: float = 1.0) -> None:
        self.update(render_groups(groups, width, scale) if groups else Text("No data."))
