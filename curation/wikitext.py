"""MediaWiki XML dumps: stream the pages, and turn wikitext markup into clean text.

``iter_pages`` streams ``<page>`` elements from a ``.xml`` or ``.xml.bz2`` dump without holding it in
memory. ``wikitext_to_text`` keeps headings and paragraphs and removes templates, references, tables,
files, categories, interlanguage links and the markup of links and emphasis. It is a pragmatic cleaner
(like WikiExtractor), not a full MediaWiki parser: templates are dropped, never expanded.
"""

import bz2
import html
import re
import xml.etree.ElementTree as ET

# Sections whose content is links and citations, not prose (en / es / fr).
SKIPPED_SECTIONS = {
    "references", "external links", "see also", "further reading", "notes", "sources", "bibliography",
    "referencias", "enlaces externos", "véase también", "bibliografía", "notas",
    "références", "liens externes", "voir aussi", "bibliographie", "notes et références",
}
DROPPED_LINK_PREFIXES = {
    "file", "image", "media", "category", "archivo", "imagen", "categoría", "fichier", "catégorie",
}
REDIRECT = re.compile(r"^\s*#\s*(redirect|redirección|redirection|redirige)\b", re.IGNORECASE)

COMMENT = re.compile(r"<!--[\s\S]*?(?:-->|$)")
DROPPED_ELEMENTS = re.compile(
    r"<(ref|math|gallery|timeline|imagemap|score|chem|graph|mapframe|references)\b[^>]*?"
    r"(?:/>|>[\s\S]*?</\1\s*>)", re.IGNORECASE)
SELF_CLOSING_REF = re.compile(r"<ref\b[^>]*/>", re.IGNORECASE)
HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*\b[^>]*>")
TEMPLATE = re.compile(r"\{\{(?:(?!\{\{|\}\})[\s\S])*\}\}")
TABLE = re.compile(r"\{\|(?:(?!\{\||\|\})[\s\S])*\|\}")
INTERNAL_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
EMPHASIS = re.compile(r"'{2,5}")
HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$")
MAGIC_WORD = re.compile(r"__[A-Z]+__")
LIST_MARKER = re.compile(r"^[*#:;]+\s*")


def _remove_nested(pattern, text):
    """Remove innermost matches until none are left (templates and tables nest)."""
    while True:
        text, n = pattern.subn("", text)
        if n == 0:
            return text


def _render_link(match):
    target, _, label = match.group(1).partition("|")
    prefix, colon, _ = target.partition(":")
    prefix = prefix.strip().lower()
    if colon and (prefix in DROPPED_LINK_PREFIXES or re.fullmatch(r"[a-z]{2,3}(-[a-z]+)?", prefix)):
        return ""  # files, categories and interlanguage links carry no prose
    label = label.rsplit("|", 1)[-1] if label else target
    return label.strip()


def wikitext_to_text(wikitext):
    text = COMMENT.sub("", wikitext)
    text = DROPPED_ELEMENTS.sub("", text)
    text = SELF_CLOSING_REF.sub("", text)
    text = _remove_nested(TEMPLATE, text)
    text = _remove_nested(TABLE, text)
    while True:  # innermost links first, so captions with links inside file links resolve
        text, n = INTERNAL_LINK.subn(_render_link, text)
        if n == 0:
            break
    text = EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = HTML_TAG.sub("", text)
    text = EMPHASIS.sub("", text)
    text = MAGIC_WORD.sub("", text)
    text = html.unescape(text)

    out, skipping = [], False
    for line in text.split("\n"):
        heading = HEADING.match(line)
        if heading:
            title = heading.group(2).strip()
            skipping = title.lower() in SKIPPED_SECTIONS
            if not skipping and title:
                out.extend(["", title, ""])
            continue
        if skipping:
            continue
        line = LIST_MARKER.sub("", line).strip()
        if line.startswith(("{|", "|}", "|", "!")):  # debris of a malformed table
            continue
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" +([,.;:)])", r"\1", text)  # spaces left where a reference or template was
    text = re.sub(r"\(\s*\)", "", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def open_dump(path):
    return bz2.open(path, "rb") if str(path).endswith(".bz2") else open(path, "rb")


def iter_pages(path):
    """Yield dicts (id, title, ns, redirect, text) for each <page> of a dump, streaming.

    A malformed or truncated file raises ET.ParseError, EOFError or OSError after the pages before the
    damage have been yielded; the caller decides what to do.
    """
    with open_dump(path) as f:
        context = ET.iterparse(f, events=("start", "end"))
        root = None
        for event, elem in context:
            if root is None:
                root = elem
            if event != "end" or _local(elem.tag) != "page":
                continue
            page = {"id": None, "title": "", "ns": 0, "redirect": False, "text": ""}
            for child in elem.iter():
                name = _local(child.tag)
                if name == "title":
                    page["title"] = child.text or ""
                elif name == "ns":
                    page["ns"] = int((child.text or "0").strip() or 0)
                elif name == "id" and page["id"] is None:
                    page["id"] = (child.text or "").strip()
                elif name == "redirect":
                    page["redirect"] = True
                elif name == "text":
                    page["text"] = child.text or ""
            if REDIRECT.match(page["text"]):
                page["redirect"] = True
            yield page
            root.clear()  # drop finished pages: memory stays flat over a multi-GB dump
