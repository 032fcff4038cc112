"""The README's operations table lists every operation and tells the truth about it."""

from __future__ import annotations

import re
from pathlib import Path

from openkvs.api.models import all_operations
from openkvs.app import DISPATCHER_KEY, build_app
from openkvs.auth.credentials import CredentialStore
from openkvs.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def table() -> dict[tuple[str, str], str]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.fullmatch(r"\| (\S+) \| (\w+) \| (.+) \|", line)
        if m and m.group(1) not in ("Service", "---", "(data"):
            rows[(m.group(1), m.group(2))] = m.group(3)
    return rows


def test_every_model_operation_is_listed(tmp_path: Path) -> None:
    rows = table()
    app = build_app(Settings.load({}, None, {"data_dir": tmp_path}))
    implemented = app[DISPATCHER_KEY].implemented()
    for service, name in all_operations():
        assert (service, name) in rows, f"{service} {name} missing from README"
        status = rows[(service, name)]
        assert status.startswith("implemented") == ((service, name) in implemented), (name, status)


def test_quickstart_has_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text


def test_toml_examples_are_valid_settings(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block)
        settings = Settings.load({}, path)  # raises ConfigError on any unknown key or bad value
        CredentialStore.load(settings.credentials)  # policies parse
