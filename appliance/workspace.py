"""The workspace: the one folder that holds all runtime state.

Layout (created on first use):
    reckon.db        SQLite store: runs, traces, datasets, eval results, candidates, jobs
    artifacts/       datasets, eval reports, adapters, checkpoints (content-addressed dirs)
    bundles/         frozen, signed versions
    keys/            the site's signing key (0600) and keyring/ of other sites' public keys
    ledger/          the audit ledger (its own SQLite file) and its checkpoint key
    logs/            job logs

The location is --home, else RECKON_HOME, else ./workspace. It is never inside the
installed source tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ConfigError

SOURCE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> "Workspace":
        """Pick the workspace folder from --home, RECKON_HOME or ./workspace and create it."""
        chosen = home or os.environ.get("RECKON_HOME") or "workspace"
        root = Path(chosen).expanduser().resolve()
        for package in ("appliance", "tui", "bundles", "tools", "audit"):
            package_dir = SOURCE_ROOT / package
            if root == package_dir or package_dir in root.parents:
                raise ConfigError(
                    f"workspace {root} is inside the source package {package_dir}; "
                    "choose a folder outside the source tree with --home or RECKON_HOME"
                )
        workspace = cls(root)
        workspace.create()
        return workspace

    def create(self) -> None:
        for folder in (self.root, self.artifacts, self.bundles, self.keys, self.keyring,
                       self.ledger_dir, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.keys, 0o700)

    @property
    def db_path(self) -> Path:
        return self.root / "reckon.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def keyring(self) -> Path:
        return self.root / "keys" / "keyring"

    @property
    def ledger_dir(self) -> Path:
        return self.root / "ledger"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger" / "ledger.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def artifact_dir(self, kind: str, name: str) -> Path:
        """Return artifacts/<kind>/<name>/, created."""
        path = self.artifacts / kind / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def store(self):
        from appliance.store import Store

        return Store(self.db_path)
