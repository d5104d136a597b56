"""The README's Python examples run as written and say what they print.

Each ```python block runs in one shared namespace, in order, from a temporary
directory; a block whose first line is ``# needs: <module>`` is skipped when
that module cannot be imported (CUDA examples on a machine without a GPU).
"""
import importlib
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def _missing(block):
    first = block.splitlines()[0]
    m = re.match(r"#\s*needs:\s*(.+)", first)
    if not m:
        return None
    for need in m.group(1).split(","):
        need = need.strip()
        if need == "cuda":
            import torch
            if not torch.cuda.is_available():
                return need
            continue
        try:
            importlib.import_module(need)
        except ImportError:
            return need
    return None


@pytest.mark.skipif(not os.path.exists(README), reason="README.md ships with the source, "
                    "not with an installed wheel")
def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    blocks = _blocks()
    assert len(blocks) >= 2, "the README lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    ran = 0
    for block in blocks:
        if _missing(block):
            continue
        exec(compile(block, README, "exec"), namespace)
        ran += 1
    assert ran >= 2
