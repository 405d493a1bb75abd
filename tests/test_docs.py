"""The project's own account of its objectives (docs/objectives.md) is what the code cites, and
every test it names as pinning a behaviour exists."""

from __future__ import annotations

import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
OBJECTIVES_DOC = ROOT / "docs" / "objectives.md"


def _tracked_files() -> list[pathlib.Path]:
  out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout
  return [ROOT / line for line in out.splitlines() if line]


def test_no_citation_of_a_document_outside_the_repository():
  # The semantics reference the code once cited is not part of the project.
  stale = "OBJECTIVES" + ".md"
  citing = [str(p.relative_to(ROOT)) for p in _tracked_files()
            if p.suffix in (".py", ".md", ".yaml", ".sh") and p.is_file()
            and stale in p.read_text(encoding="utf-8", errors="replace")]
  assert not citing, f"{stale} is cited by {citing}; cite docs/objectives.md"


def test_every_objective_module_cites_the_objectives_doc():
  modules = sorted((ROOT / "data_pipelines" / "objectives").glob("[!_]*.py"))
  assert modules
  for module in modules:
    assert "docs/objectives.md" in module.read_text(encoding="utf-8"), module.name


def test_tests_named_in_the_objectives_doc_exist():
  text = OBJECTIVES_DOC.read_text(encoding="utf-8")
  for section in ("## Masked LM", "## T5 span corruption", "## BART denoising",
                  "## XLNet permutation LM", "## Packing"):
    assert section in text
  named = set(re.findall(r"`(test_\w+)`", text))
  assert len(named) >= 10
  defined = set()
  for path in (ROOT / "tests").rglob("test_*.py"):
    defined |= set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.MULTILINE))
  missing = sorted(named - defined)
  assert not missing, f"docs/objectives.md names tests that do not exist: {missing}"
