"""Help: the keys and how the loop runs from the console."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Markdown

from tui.screens.base import AreaScreen

HELP = """\
# Reckoning operator console

Every screen reads the workspace database, so jobs started here or with `reckon`
on the command line show up in both. Jobs run as separate processes: closing the
console does not stop them.

## Keys

| Key | Where | Does |
|-----|-------|------|
| `1` … `8` | everywhere | Overview, Runs, Traces, Dataset, Eval, Train, Bundles, Ledger |
| `?` or `F1` | everywhere | this help |
| `ctrl+p` | everywhere | command palette: every screen and action |
| `ctrl+r` | everywhere | reload the screen from the database |
| `ctrl+q` | everywhere | quit (running jobs continue) |
| `ctrl+s` | Runs, Dataset, Eval, Train | start the job the form describes |
| `ctrl+x` | Runs, Train | cancel the selected job |
| `ctrl+o` | Eval | compare the results in A, B and C |
| `enter` | Eval, stored results | put the result into the next empty slot of A, B, C |
| `a` / `o` / `r` / `e` | Traces | accept / accept overriding a failed verdict / reject / edit |
| `f` `s` `v` `x` `i` | Bundles | freeze / sign / verify / export / import |
| `v` | Ledger | verify the ledger |
| `tab` | forms | next field |

## The loop

1. **Runs**: record traces of the teacher on the pack.
2. **Traces**: read conversations, accept, reject or fix them.
3. **Dataset**: build a versioned training set (the curation funnel).
4. **Train**: train LoRA candidates and watch the loss.
5. **Eval**: compare candidates with the teacher on the frozen eval set.
6. **Bundles**: freeze, sign and export the winner.
7. **Ledger**: auditors check versions, their eval history and the checkpoints.
"""


class HelpScreen(AreaScreen):
    def body(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(HELP)
