"""Code digests: which package files a workflow script runs, and when its digest changes."""

from pathlib import Path

import pytest

from echoflow.codeversion import PACKAGE_DIR, code_digest, code_files, imported_names

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


@pytest.fixture
def package(tmp_path):
    """Write a small package ``pkg`` and a script that uses part of it."""
    root = tmp_path / "pkg"
    (root / "models").mkdir(parents=True)
    (root / "templates").mkdir()
    files = {
        "__init__.py": '__version__ = "1.0"\n',
        "frames.py": "import pkg\nfrom pkg.video import decode\n",
        "video.py": "def decode():\n    from pkg import atomic\n    return atomic\n",
        "atomic.py": "",
        "unused.py": "",
        "models/__init__.py": "from pkg.models.small import Small\n",
        "models/small.py": "",
        "report.py": 'TEMPLATE = "page.html"\n',
        "templates/page.html": "<html></html>",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    script = tmp_path / "script.py"
    script.write_text("from pkg.frames import build\nimport pkg.models\n", encoding="utf-8")
    return root, script


def names(paths, root):
    return sorted(path.relative_to(root).as_posix() for path in paths)


def test_imported_names_include_from_imports():
    source = "import os\nimport echoflow.video\nfrom echoflow import via\nfrom echoflow.frames import Box\n"
    assert imported_names(source) == {"echoflow.video", "echoflow", "echoflow.via", "echoflow.frames",
                                      "echoflow.frames.Box"}


def test_code_files_follow_imports(package):
    root, script = package
    assert names(code_files(script, root), root) == ["atomic.py", "frames.py", "models/__init__.py",
                                                     "models/small.py", "video.py"]


def test_code_files_add_named_templates(package, tmp_path):
    root, _ = package
    script = tmp_path / "report_script.py"
    script.write_text("from pkg.report import TEMPLATE\n", encoding="utf-8")
    assert names(code_files(script, root), root) == ["report.py", "templates/page.html"]


def test_digest_changes_with_imported_module(package):
    root, script = package
    before = code_digest.__wrapped__(str(script), root)
    (root / "atomic.py").write_text("X = 1\n", encoding="utf-8")
    assert code_digest.__wrapped__(str(script), root) != before


@pytest.mark.parametrize("name", ["unused.py", "__init__.py", "templates/page.html"])
def test_digest_ignores_files_not_run(package, name):
    root, script = package
    before = code_digest.__wrapped__(str(script), root)
    (root / name).write_text("# changed\n", encoding="utf-8")
    assert code_digest.__wrapped__(str(script), root) == before


def test_workflow_scripts_reach_their_modules():
    frames = names(code_files(SCRIPTS / "frames.py"), PACKAGE_DIR)
    report = names(code_files(SCRIPTS / "report.py"), PACKAGE_DIR)
    assert "frames.py" in frames
    assert "video.py" in frames
    assert "training.py" not in frames
    assert "templates/report.html.j2" in report
