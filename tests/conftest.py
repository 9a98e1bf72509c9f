"""Shared fixtures: an isolated workspace and cache per test, and the tiny test pack."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.netguard import enforce_offline

enforce_offline()

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    from appliance.workspace import Workspace

    home = tmp_path / "workspace"
    monkeypatch.setenv("RECKON_HOME", str(home))
    return Workspace.resolve(home)


@pytest.fixture
def tiny_pack_path(tmp_path) -> Path:
    from tests.support.tiny_pack import write_tiny_pack

    return write_tiny_pack(tmp_path / "tiny-pack")


@pytest.fixture
def tiny_pack(tiny_pack_path):
    from appliance.packs import load_pack

    return load_pack(tiny_pack_path)
