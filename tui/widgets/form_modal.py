"""A modal form: labelled inputs, OK and Cancel; dismisses with {field id: value} or None."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from tui.text import literal


@dataclass(frozen=True)
class Field:
    id: str
    label: str
    value: str = ""
    password: bool = False
    placeholder: str = ""


class FormModal(ModalScreen[dict | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, fields: list[Field], ok_label: str = "OK"):
        super().__init__()
        self.title_text = title
        self.fields = fields
        self.ok_label = ok_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(literal(self.title_text, "bold"))
            for field in self.fields:
                yield Label(field.label)
                yield Input(field.value, id=f"field-{field.id}", password=field.password,
                            placeholder=field.placeholder)
            with Horizontal(classes="buttons"):
                yield Button(self.ok_label, id="form-ok", variant="primary")
                yield Button("Cancel", id="form-cancel")

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#form-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#form-ok")
    @on(Input.Submitted)
    def _ok(self) -> None:
        self.dismiss({field.id: self.query_one(f"#field-{field.id}", Input).value
                      for field in self.fields})
