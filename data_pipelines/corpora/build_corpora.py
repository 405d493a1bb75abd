"""Rebuilds the bundled prose corpora from two extracted Debian packages.

Usage (see LICENSE_NOTES.md for the packages and versions):

  python data_pipelines/corpora/build_corpora.py \
      --python_docs /tmp/corp/py/usr/share/doc/python3.11/html/_sources \
      --libreoffice_ko /tmp/corp/ko/usr/share/libreoffice/help/ko/text \
      --out_dir data_pipelines/corpora

Writes `python_docs_en.jsonl` and `libreoffice_help_ko.jsonl`: one JSON object per source
file, {"text": paragraphs joined by "\\n", "source": path relative to the root}. Only prose is
kept: code, tables, directive arguments and markup are dropped, so that a tokenizer trained on
the result learns language rather than reStructuredText or HTML.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import html.parser
import json
import os
import re
from collections.abc import Iterator

# Directives whose indented body is prose worth keeping; every other directive (code, tables,
# index entries, toctrees, includes, unknown ones) is dropped together with its body.
_PROSE_DIRECTIVES = frozenset((
    "method", "function", "attribute", "data", "class", "exception", "note", "seealso",
    "warning", "deprecated", "versionadded", "versionchanged", "deprecated-removed",
    "cmdoption", "decorator", "decoratormethod", "coroutinemethod", "coroutinefunction",
    "classmethod", "staticmethod", "abstractmethod", "opcode", "envvar", "impl-detail",
    "pdbcommand", "describe", "object", "topic", "sidebar", "only", "admonition", "tip",
    "important", "caution", "hint", "attention", "danger", "error", "glossary",
))

_DIRECTIVE_RE = re.compile(r"^\.\.\s+([\w:-]+)::")
_EXPLICIT_RE = re.compile(r"^\.\.(\s|$)")
_UNDERLINE_RE = re.compile(r"^([=\-~^\"'`#*+<>_:.])\1{2,}\s*$")
_SIMPLE_TABLE_RE = re.compile(r"^=+( +=+)+\s*$")
_GRID_RE = re.compile(r"^[+|]")
_BULLET_RE = re.compile(r"^([-*+•]|#\.|\d+\.|\(?[a-z\d]\))\s+")
_FIELD_RE = re.compile(r"^:[\w -]+:(\s|$)")

_ROLE_RE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_LINK_RE = re.compile(r"`([^`<]*?)\s*<[^>`]*>`__?")
_INTERPRETED_RE = re.compile(r"`([^`]+)`_{0,2}")
_LITERAL_RE = re.compile(r"``(.+?)``")
_STRONG_RE = re.compile(r"\*\*(.+?)\*\*")
_EMPH_RE = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_SUBST_RE = re.compile(r"\|[^|\s][^|]*\|_{0,2}")
_FOOTNOTE_RE = re.compile(r"\s*\[(#\w*|\d+|\*)\]_")
_REF_RE = re.compile(r"(?<!\w)([A-Za-z0-9][\w-]*[A-Za-z0-9])_(?!\w)")


def _role_text(match: re.Match) -> str:
  """`:func:\\`~os.path.join\\`` shows as `join`; `title <target>` shows as `title`."""
  text = match.group(1)
  if "<" in text and text.endswith(">"):
    return text[: text.index("<")].strip()
  text = text.lstrip("!")
  if text.startswith("~"):
    text = text[1:].rsplit(".", 1)[-1]
  return text


def clean_inline(text: str) -> str:
  """Reduces inline reST markup to the words a reader would see."""
  text = _ROLE_RE.sub(_role_text, text)
  text = _LITERAL_RE.sub(r"\1", text)
  text = _LINK_RE.sub(r"\1", text)
  text = _INTERPRETED_RE.sub(r"\1", text)
  text = _STRONG_RE.sub(r"\1", text)
  text = _EMPH_RE.sub(r"\1", text)
  text = _SUBST_RE.sub("", text)
  text = _FOOTNOTE_RE.sub("", text)
  text = _REF_RE.sub(r"\1", text)
  text = text.replace("\\ ", "")
  text = re.sub(r"\\([*`_|\\:])", r"\1", text)
  return re.sub(r"\s+", " ", text).strip()


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip(" "))


def rst_paragraphs(source: str) -> list[str]:
  """Returns the prose paragraphs of one reST file, markup removed, wrapped lines joined."""
  lines = source.expandtabs(8).splitlines()
  paragraphs: list[str] = []
  current: list[str] = []
  current_indent = -1

  def flush() -> None:
    nonlocal current, current_indent
    text = clean_inline(" ".join(current))
    if current and not text.endswith("::") and re.search(r"[A-Za-z]{2}", text):
      paragraphs.append(text)
    current, current_indent = [], -1

  i, n = 0, len(lines)

  def skip_block(base: int, start: int) -> int:
    """Index of the first non-blank line at indent <= base after `start`."""
    j = start
    while j < n and (not lines[j].strip() or _indent(lines[j]) > base):
      j += 1
    return j

  while i < n:
    line = lines[i]
    stripped = line.strip()
    ind = _indent(line)
    if not stripped:
      if current and current[-1].endswith("::"):
        # A literal block follows: the paragraph's trailing `::` reads as `:` (or vanishes).
        lead = current[-1][:-2].rstrip()
        current[-1] = lead + ":" if lead and not current[-1].endswith(" ::") else lead
        base = current_indent
        flush()
        i = skip_block(base, i + 1)
        continue
      flush()
      i += 1
      continue
    if _EXPLICIT_RE.match(stripped):
      flush()
      directive = _DIRECTIVE_RE.match(stripped)
      if directive and directive.group(1) in _PROSE_DIRECTIVES:
        # Keep the body, drop the directive line, its continuation and its `:option:` lines.
        i += 1
        while i < n and lines[i].strip() and (_FIELD_RE.match(lines[i].strip())
                                             or _indent(lines[i]) > ind):
          if not _FIELD_RE.match(lines[i].strip()) and _indent(lines[i]) <= ind + 3:
            break
          i += 1
        continue
      i = skip_block(ind, i + 1)
      continue
    if stripped.startswith(">>>"):
      flush()
      while i < n and lines[i].strip():
        i += 1
      continue
    if _SIMPLE_TABLE_RE.match(stripped):
      flush()
      i += 1
      while i < n and not (_SIMPLE_TABLE_RE.match(lines[i].strip())
                           and (i + 1 == n or not lines[i + 1].strip())):
        i += 1
      i += 1
      continue
    if _GRID_RE.match(stripped) and (stripped.startswith(("+-", "+="))
                                      or (not current and stripped.startswith("|"))):
      flush()
      while i < n and _GRID_RE.match(lines[i].strip()):
        i += 1
      continue
    if _UNDERLINE_RE.match(stripped):
      # Heading underline or overline: the line above (if any) is a heading paragraph.
      flush()
      i += 1
      continue
    if _FIELD_RE.match(stripped):
      flush()
      i += 1
      continue
    bullet = _BULLET_RE.match(stripped)
    if bullet:
      flush()
      current, current_indent = [stripped[bullet.end():]], ind + bullet.end()
      i += 1
      continue
    if current and ind != current_indent:
      flush()
    if not current:
      current_indent = ind
    current.append(stripped)
    i += 1
  flush()
  return paragraphs


_HANGUL_RE = re.compile(r"[\uac00-\ud7a3]")
_HTML_BLOCKS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td"})
_HTML_SKIP = frozenset({"script", "style", "pre", "code", "header", "aside", "footer",
                        "noscript", "head"})
_VOID = frozenset({"br", "img", "input", "meta", "link", "hr", "base", "col", "wbr"})


class _HelpPageParser(html.parser.HTMLParser):
  """Collects the text of block elements, skipping navigation, code and hidden variants."""

  def __init__(self) -> None:
    super().__init__(convert_charrefs=True)
    self.paragraphs: list[str] = []
    self._stack: list[tuple[str, bool]] = []  # (tag, starts a skipped subtree)
    self._skip = 0
    self._buffer: list[str] = []

  def handle_starttag(self, tag, attrs):
    if tag in _VOID:
      return
    names = dict(attrs)
    # `hidden` spans hold the other OS's wording of the same sentence; keep one variant.
    skipped = (tag in _HTML_SKIP or "hidden" in names
               or names.get("class") in ("howtogetheader", "relatedtopics", "related"))
    self._stack.append((tag, skipped))
    self._skip += skipped
    if tag in _HTML_BLOCKS:
      self._emit()

  def handle_endtag(self, tag):
    if tag in _VOID:
      return
    while self._stack:
      open_tag, skipped = self._stack.pop()
      self._skip -= skipped
      if open_tag == tag:
        break
    if tag in _HTML_BLOCKS:
      self._emit()

  def handle_data(self, data):
    if not self._skip:
      self._buffer.append(data)

  def _emit(self) -> None:
    text = re.sub(r"\s+", " ", "".join(self._buffer)).strip()
    self._buffer = []
    if text:
      self.paragraphs.append(html.unescape(text))

  def close(self):
    super().close()
    self._emit()


def html_paragraphs(source: str) -> list[str]:
  """Returns the Hangul-bearing paragraphs of one help page."""
  parser = _HelpPageParser()
  parser.feed(source)
  parser.close()
  return [p for p in parser.paragraphs if _HANGUL_RE.search(p)]


def _walk(root: str, suffix: str) -> Iterator[str]:
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      if name.endswith(suffix):
        yield os.path.join(dirpath, name)


def build(root: str, suffix: str, extract, out_path: str, max_bytes: int,
          exclude: tuple[str, ...] = ()) -> tuple[int, int]:
  """Writes one jsonl corpus of at most `max_bytes`; returns (documents, bytes).

  Documents are admitted in the order of sha256(relative path) until the budget is spent, so
  the subset is a reproducible spread over the whole manual rather than its first chapters.
  Paragraphs already seen in an admitted document are dropped (help pages repeat boilerplate).
  """
  sources = [os.path.relpath(p, root) for p in _walk(root, suffix)]
  sources = [s for s in sources if not s.startswith(exclude)]
  sources.sort(key=lambda s: hashlib.sha256(s.encode()).hexdigest())
  seen: set[str] = set()
  kept: dict[str, str] = {}
  total = 0
  for source in sources:
    with open(os.path.join(root, source), encoding="utf-8") as f:
      paragraphs = [p for p in extract(f.read()) if p not in seen]
    if not paragraphs:
      continue
    line = json.dumps({"text": "\n".join(paragraphs), "source": source}, ensure_ascii=False)
    size = len(line.encode()) + 1
    if total + size > max_bytes:
      continue
    total += size
    seen.update(paragraphs)
    kept[source] = line
  with open(out_path, "w", encoding="utf-8") as out:
    for source in sorted(kept):
      out.write(kept[source] + "\n")
  return len(kept), os.path.getsize(out_path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--python_docs", required=True, help="…/html/_sources of python3.11-doc")
  parser.add_argument("--libreoffice_ko", required=True, help="…/help/ko/text")
  parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  # Release notes, the C API and distutils are mostly lists of names, not prose.
  for name, root, suffix, extract, budget, exclude in (
      ("python_docs_en.jsonl", args.python_docs, ".rst.txt", rst_paragraphs, 2_500_000,
       ("whatsnew", "c-api", "distutils")),
      ("libreoffice_help_ko.jsonl", args.libreoffice_ko, ".html", html_paragraphs, 1_200_000,
       ())):
    docs, size = build(root, suffix, extract, os.path.join(args.out_dir, name), budget,
                       exclude)
    print(f"{name}: {docs} documents, {size} bytes")


if __name__ == "__main__":
  main()
