"""Base class of the area screens: header, footer, polling hook and error reporting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input

from appliance.errors import ReckonError

if TYPE_CHECKING:
    from tui.app import ReckonApp


class AreaScreen(Screen):
    """A screen of one area. Subclasses compose `body()` and implement `refresh_data()`."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield from self.body()
        yield Footer()

    def body(self) -> ComposeResult:
        return iter(())

    @property
    def reckon(self) -> "ReckonApp":
        return self.app  # type: ignore[return-value]

    @property
    def store(self):
        return self.reckon.store

    def on_screen_resume(self) -> None:
        self.refresh_data()

    def refresh_data(self) -> None:
        """Reload what the screen shows from the database; called by the app's poll."""

    def report_error(self, error: BaseException | str) -> None:
        self.reckon.report_error(error)

    # -- form helpers ----------------------------------------------------------------------------

    def text_value(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value.strip()

    def int_value(self, widget_id: str, label: str, minimum: int | None = 1,
                  default: int | None = None) -> int | None:
        """Parse an integer field; raise ReckonError naming the field when invalid."""
        text = self.text_value(widget_id)
        if not text:
            if default is not None:
                return default
            raise ReckonError(f"{label} is missing; enter a whole number")
        try:
            value = int(text)
        except ValueError:
            raise ReckonError(f"{label} must be a whole number, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise ReckonError(f"{label} must be at least {minimum}, got {value}")
        return value

    def float_value(self, widget_id: str, label: str, default: float | None = None) -> float | None:
        text = self.text_value(widget_id)
        if not text:
            return default
        try:
            return float(text)
        except ValueError:
            raise ReckonError(f"{label} must be a number, got {text!r}") from None


def data_table(widget_id: str, *columns: str, cursor_type: str = "row") -> DataTable:
    """Create a DataTable with its columns already added.

    The columns exist before the screen mounts, because the app's poll may refresh a
    screen before the screen's own on_mount handler has run.
    """
    table = DataTable(id=widget_id, cursor_type=cursor_type, zebra_stripes=cursor_type == "row")
    table.add_columns(*columns)
    return table


def table_signature(store, table: str) -> tuple | None:
    """Return (row count, max rowid) of a table, or None when it does not exist.

    Screens compare it between polls to skip reloading lists that did not change.
    NOTE: an in-place update of a row keeps the signature, so such lists reload only when
    rows are added or removed, or when the screen is shown again.
    """
    if not store.db[table].exists():
        return None
    return tuple(store.db.execute(f"select count(*), max(rowid) from [{table}]").fetchone())


def table_rows_changed(table: Any, rows: list[tuple]) -> bool:
    """Return True when `rows` differ from what the DataTable showed last time."""
    previous = getattr(table, "_reckon_rows", None)
    if previous == rows:
        return False
    table._reckon_rows = rows
    return True


def fill_table(table: Any, rows: list[tuple]) -> bool:
    """Replace a DataTable's rows with [(key, cell, ...)] and keep the cursor on its key.

    Returns False (and leaves the table alone) when the rows did not change, so polling
    does not reset the operator's scroll position.
    """
    if not table_rows_changed(table, rows):
        return False
    selected = selected_key(table)
    table.clear()
    for key, *cells in rows:
        table.add_row(*cells, key=key)
    if selected is not None:
        keys = [row[0] for row in rows]
        if selected in keys:
            table.move_cursor(row=keys.index(selected), animate=False)
    return True


def selected_key(table: Any) -> str | None:
    """Return the key of the DataTable row under the cursor, or None."""
    if table.row_count == 0:
        return None
    try:
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
    except Exception:  # noqa: BLE001 - an out-of-range cursor after clear() means no row
        return None
    return key.value
