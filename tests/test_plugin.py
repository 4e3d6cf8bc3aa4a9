"""The twistd plugin: found from the checkout and shipped in the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from olla.daemon import tap

REPO = Path(__file__).resolve().parents[1]


def test_plugin_found() -> None:
    """If twistd scans for service makers from the checkout, then ``olla`` is among them."""
    import twisted.plugins

    names = {maker.tapname for maker in getPlugins(IServiceMaker, twisted.plugins)}
    assert "olla" in names


def test_no_init_in_plugin_dirs() -> None:
    """If twisted/ or twisted/plugins/ had an __init__.py, then the plugin would be skipped."""
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    """If the config is invalid, then Options raises UsageError naming the key path."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "discovery:\n  static:\n    endpoints:\n"
        "      - {url: 'http://127.0.0.1:1', name: a, type: ollama}\n"
        "      - {url: 'http://127.0.0.1:2', name: b, type: ollama, check_interval: fast}\n"
    )
    with pytest.raises(usage.UsageError) as raised:
        tap.Options().parseOptions(["--config", str(bad)])
    assert "discovery.static.endpoints[1].check_interval" in str(raised.value)


def test_wheel_ships_plugin(tmp_path: Path) -> None:
    """If olla is built as a wheel, then it carries twisted/plugins/olla_plugin.py and no
    twisted/__init__.py, and twistd finds the plugin from an install of it; the dashboard's
    files are in it and load from the install."""
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--quiet", "-w", str(tmp_path / "dist"), str(REPO),
        ],
        check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("olla-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/olla_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "olla/py.typed" in names
    for asset in ("index.html", "dashboard.js", "dashboard.css"):
        assert f"olla/web/ui/{asset}" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
         str(wheel)],
        check=True,
    )  # fmt: skip
    probe = (
        "import sys, twisted.plugins; from twisted.plugin import getPlugins;"
        "from twisted.application.service import IServiceMaker;"
        "m = [p for p in getPlugins(IServiceMaker, twisted.plugins) if p.tapname == 'olla'];"
        "import olla; print(len(m), olla.__file__);"
        "from olla.web.dashboard import load_assets; print(','.join(sorted(load_assets())))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == "1"
    assert out[1].startswith(str(target))
    assert out[2] == "dashboard.css,dashboard.js,index.html"
