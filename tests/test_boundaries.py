"""The engine, config and headless modules import no Textual or Rich (in a fresh process)."""

from __future__ import annotations

import subprocess
import sys


def test_engine_imports_no_ui_library() -> None:
    code = (
        "import sys, kafkaconsole.engine.engine, kafkaconsole.engine.fleet, "
        "kafkaconsole.headless, kafkaconsole.config\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "print(','.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"UI libraries imported by the engine: {res.stdout} {res.stderr}"
