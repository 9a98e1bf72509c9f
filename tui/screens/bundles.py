"""Bundles: freeze, sign, verify, export and import frozen versions.

Every action calls the bundles package as `reckon bundle` does and runs in a thread
worker, because hashing and signing read every file of a bundle.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Label, Static

from appliance.errors import ReckonError
from tui.screens.base import AreaScreen, data_table, fill_table, selected_key, table_signature
from tui.screens.overview import module_available
from tui.text import literal, short
from tui.widgets.form_modal import Field, FormModal

PASSPHRASE_ENV = "RECKON_KEY_PASSPHRASE"


class BundlesScreen(AreaScreen):
    """Versions table and actions on top; the selected version's manifest below."""

    BINDINGS = [
        Binding("f", "freeze", "Freeze"),
        Binding("s", "sign", "Sign"),
        Binding("v", "verify", "Verify"),
        Binding("x", "export", "Export"),
        Binding("i", "import_archive", "Import"),
    ]

    def body(self) -> ComposeResult:
        with Vertical(id="bundles-body"):
            yield Static(id="bundles-availability")
            with Horizontal(classes="buttons"):
                yield Button("Freeze", id="bundle-freeze")
                yield Button("Sign", id="bundle-sign")
                yield Button("Verify", id="bundle-verify")
                yield Button("Export", id="bundle-export")
                yield Button("Import", id="bundle-import")
            yield Label("Frozen and imported versions", classes="section-title")
            yield data_table(
                "versions-table", "digest", "created", "source", "pack", "signer", "operator", "present")
            yield Static(id="bundle-result")
            yield Static(id="bundle-detail")

    def on_mount(self) -> None:
        if not module_available("bundles.freeze"):
            self.query_one("#bundles-availability", Static).update(Text(
                "Bundles are not available: the bundles package is not installed.", style="yellow"))
            for button in self.query(Button):
                button.disabled = True

    def refresh_data(self) -> None:
        if not module_available("bundles.freeze"):
            return
        from bundles.freeze import VERSIONS_TABLE, list_versions

        signature = table_signature(self.store, VERSIONS_TABLE)
        if signature is not None and signature == getattr(self, "_versions_signature", None):
            return
        self._versions_signature = signature
        rows = []
        for row in list_versions(self.reckon.workspace):
            rows.append((row["id"], literal(short(row["id"], 16)), literal(row["created_at"]),
                         row["source"], literal(row["pack_id"]),
                         literal(row.get("signer_name") or "unsigned"), literal(row["operator"]),
                         "yes" if row["present"] else "MISSING"))
        table = self.query_one("#versions-table", DataTable)
        fill_table(table, rows)
        self.show_version(selected_key(table))

    @on(DataTable.RowHighlighted, "#versions-table")
    def _version_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_version(event.row_key.value)

    def show_version(self, digest: str | None) -> None:
        detail = self.query_one("#bundle-detail", Static)
        if digest is None:
            detail.update(Text("No frozen version yet: freeze a trained adapter.", style="dim"))
            return
        if getattr(self, "_shown", None) == digest:
            return
        self._shown = digest
        from bundles.freeze import load_version

        try:
            version = load_version(self.reckon.workspace, digest)
        except ReckonError as error:
            detail.update(literal(str(error), "red"))
            return
        manifest = version.manifest
        text = Text()
        for label, value in (
                ("version", version.digest), ("signed", "yes" if version.signed else "no"),
                ("created", f"{manifest.get('created_at')} by {manifest.get('operator')}"),
                ("base", f"{manifest['base_model'].get('name')} ({manifest['base_model'].get('weights_sha256')})"),
                ("pack", f"{manifest['pack'].get('id')} ({manifest['pack'].get('digest')})"),
                ("dataset", manifest.get("dataset_digest")), ("evalset", manifest.get("evalset_digest")),
                ("format", manifest.get("prompt_format")), ("files", str(len(manifest.get("files", {}))))):
            text.append(f"{label:<9}", style="bold")
            text.append(literal(value))
            text.append("\n")
        detail.update(text)

    def selected_digest(self) -> str:
        digest = selected_key(self.query_one("#versions-table", DataTable))
        if digest is None:
            raise ReckonError("no version selected; select a version in the table first")
        return digest

    def on_screen_resume(self) -> None:
        self._versions_signature = None
        self.refresh_data()

    def show_result(self, text: str, ok: bool = True) -> None:
        self.query_one("#bundle-result", Static).update(literal(text, "green" if ok else "red"))
        # A signature changes a row in place, so reload the list and the detail.
        self._shown = None
        self._versions_signature = None
        self.refresh_data()

    def fail(self, error: BaseException) -> None:
        self.show_result(str(error), ok=False)
        self.report_error(error)

    # -- actions -------------------------------------------------------------------------------

    def action_freeze(self) -> None:
        fields = [Field("adapter", "Adapter folder (peft LoRA)"),
                  Field("metadata", "Metadata JSON file (as for `reckon bundle freeze`)"),
                  Field("operator", "Operator", os.environ.get("USER", ""))]
        self.app.push_screen(FormModal("Freeze an adapter", fields, "Freeze"),
                             lambda values: values and self.freeze(values))

    @work(thread=True, exclusive=True, group="bundles")
    def freeze(self, values: dict) -> None:
        from appliance.cli.bundle import _read_metadata
        from bundles.freeze import freeze

        try:
            adapter = Path(values["adapter"].strip()).expanduser()
            if not adapter.is_dir():
                raise ReckonError(f"adapter folder {adapter} not found")
            metadata_path = Path(values["metadata"].strip()).expanduser()
            if not metadata_path.is_file():
                raise ReckonError(f"metadata file {metadata_path} not found")
            # The same validation `reckon bundle freeze --metadata` applies.
            metadata = _read_metadata(metadata_path, values.get("operator") or None)
            version = freeze(self.reckon.workspace, adapter, **metadata)
        except ReckonError as error:
            self.app.call_from_thread(self.fail, error)
            return
        self.app.call_from_thread(self.show_result, f"frozen {version.digest}")

    def action_sign(self) -> None:
        try:
            digest = self.selected_digest()
        except ReckonError as error:
            self.report_error(error)
            return
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase:
            self.sign(digest, passphrase)
            return
        fields = [Field("passphrase", "Site key passphrase", password=True)]
        self.app.push_screen(FormModal(f"Sign {short(digest, 16)}", fields, "Sign"),
                             lambda values: values and self.sign(digest, values["passphrase"]))

    @work(thread=True, exclusive=True, group="bundles")
    def sign(self, digest: str, passphrase: str) -> None:
        from bundles.sign import sign_version

        try:
            signer = sign_version(self.reckon.workspace, digest, passphrase)
        except ReckonError as error:
            self.app.call_from_thread(self.fail, error)
            return
        self.app.call_from_thread(self.show_result,
                                  f"signed {digest} by {signer.name} ({signer.fingerprint})")

    def action_verify(self) -> None:
        try:
            self.verify(self.selected_digest())
        except ReckonError as error:
            self.report_error(error)

    @work(thread=True, exclusive=True, group="bundles")
    def verify(self, digest: str) -> None:
        from bundles.freeze import load_version
        from bundles.sign import verify_bundle

        try:
            path = load_version(self.reckon.workspace, digest).path
            result = verify_bundle(path, workspace=self.reckon.workspace)
        except ReckonError as error:
            self.app.call_from_thread(self.fail, error)
            return
        self.app.call_from_thread(
            self.show_result, f"verified {result.digest}: signed by {result.signer.name} "
                              f"(fingerprint {result.signer.fingerprint}), {result.files} files checked")

    def action_export(self) -> None:
        try:
            digest = self.selected_digest()
        except ReckonError as error:
            self.report_error(error)
            return
        default = self.reckon.default_export_dir() / f"{short(digest, 16)}.tar.gz"
        fields = [Field("out", "Archive path (.tar or .tar.gz)", str(default))]
        self.app.push_screen(FormModal(f"Export {short(digest, 16)}", fields, "Export"),
                             lambda values: values and self.export(digest, values["out"]))

    @work(thread=True, exclusive=True, group="bundles")
    def export(self, digest: str, out: str) -> None:
        from bundles.archive import export_version

        try:
            target = Path(out.strip()).expanduser()
            target.parent.mkdir(parents=True, exist_ok=True)
            path = export_version(self.reckon.workspace, digest, target)
        except (ReckonError, OSError) as error:
            self.app.call_from_thread(self.fail, error)
            return
        self.app.call_from_thread(self.show_result,
                                  f"exported {digest} to {path} ({path.stat().st_size} bytes)")

    def action_import_archive(self) -> None:
        fields = [Field("archive", "Archive to import")]
        self.app.push_screen(FormModal("Import a bundle archive", fields, "Import"),
                             lambda values: values and self.import_archive(values["archive"]))

    @work(thread=True, exclusive=True, group="bundles")
    def import_archive(self, archive: str) -> None:
        from bundles.archive import import_archive

        try:
            path = Path(archive.strip()).expanduser()
            if not path.is_file():
                raise ReckonError(f"archive {path} not found")
            result = import_archive(self.reckon.workspace, path)
        except ReckonError as error:
            self.app.call_from_thread(self.fail, error)
            return
        state = "already installed" if result.already_present else "imported"
        signer = result.verification.signer
        self.app.call_from_thread(self.show_result, f"{state} {result.version.digest}, signed by "
                                                    f"{signer.name} ({signer.fingerprint})")

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        actions = {"bundle-freeze": self.action_freeze, "bundle-sign": self.action_sign,
                   "bundle-verify": self.action_verify, "bundle-export": self.action_export,
                   "bundle-import": self.action_import_archive}
        action = actions.get(event.button.id or "")
        if action is not None:
            action()


__all__ = ["BundlesScreen"]
