"""The MediaWiki dump reader and the wikitext cleaner, on a small generated dump."""
import bz2
import xml.sax.saxutils as sax

import pytest

from curation import sources
from curation.download import DownloadError
from curation import wikitext

ARTICLE = """{{Infobox city
| name = Testville
| population = {{formatnum:1234}}
}}
'''Testville''' is a small [[town]] in the [[Republic of Examples|Republic]].<ref>{{cite web|url=http://x.org|title=Src}}</ref> It lies on the [[river|River Test]].<ref name="a"/>
<!-- hidden comment -->
[[File:Testville.jpg|thumb|The [[church]] of Testville]]

== History ==
The town was founded in 1200 by ''monks''. See the [http://example.org official site] for more.

{| class="wikitable"
! Year !! Population
|-
| 1900 || {{n|100}}
|}
* Farming was the main work.
* Trade grew after the bridge was built.

== References ==
{{reflist}}
* [http://example.org A source]

[[Category:Towns]]
[[fr:Testville]]
"""


def page(title, text, ns=0, pid=1, redirect=None):
    redirect_tag = f'<redirect title="{redirect}" />' if redirect else ""
    return (f"<page><title>{sax.escape(title)}</title><ns>{ns}</ns><id>{pid}</id>{redirect_tag}"
            f"<revision><id>{pid + 100}</id><text xml:space=\"preserve\">{sax.escape(text)}</text>"
            f"</revision></page>\n")


def make_dump(pages):
    return ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">\n'
            "<siteinfo><sitename>Test</sitename></siteinfo>\n" + "".join(pages) + "</mediawiki>\n")


DUMP = make_dump([
    page("Testville", ARTICLE, pid=1),
    page("Old name", "#REDIRECT [[Testville]]", pid=2, redirect="Testville"),
    page("Talk:Testville", "Some discussion about the town and its history.", ns=1, pid=3),
    page("Second", "'''Second''' is another article with a [[link]] and text.\n\nA second paragraph.",
         pid=4),
    page("Lower redirect", "#redirect [[Second]]", pid=5),
])


def test_wikitext_to_text_keeps_prose_and_headings():
    text = wikitext.wikitext_to_text(ARTICLE)
    assert text == ("Testville is a small town in the Republic. It lies on the River Test.\n\n"
                    "History\n\n"
                    "The town was founded in 1200 by monks. See the official site for more.\n\n"
                    "Farming was the main work.\n"
                    "Trade grew after the bridge was built.")


@pytest.mark.parametrize("compress", [False, True])
def test_dump_source_skips_redirects_and_other_namespaces(tmp_path, compress):
    path = tmp_path / ("dump.xml.bz2" if compress else "dump.xml")
    data = DUMP.encode("utf-8")
    path.write_bytes(bz2.compress(data) if compress else data)
    warnings = []
    spec = sources.resolve_sources([dict(kind="wiki_dump", path=str(path))])[0]
    docs = list(sources.iter_source(spec, lambda kind, msg: warnings.append(kind)))
    assert [d[0] for d in docs] == [f"{path.name}:1", f"{path.name}:4"]
    assert docs[0][2].startswith("Testville is a small town")
    assert docs[1][2] == "Second is another article with a link and text.\n\nA second paragraph."
    assert sorted(warnings) == ["non_article_namespace", "redirect", "redirect"]


def test_truncated_bz2_keeps_earlier_pages_and_warns(tmp_path):
    # compresslevel 1 = 100 kB blocks, so the first blocks survive the cut
    body = " ".join(f"word{j}" for j in range(150))
    data = bz2.compress(make_dump([page(f"P{i}", f"Article {i}: {body}", pid=i)
                                   for i in range(1, 400)]).encode(), compresslevel=1)
    path = tmp_path / "cut.xml.bz2"
    path.write_bytes(data[: len(data) // 2])
    messages = []
    spec = sources.resolve_sources([dict(kind="wiki_dump", path=str(path))])[0]
    docs = list(sources.iter_source(spec, lambda kind, msg: messages.append((kind, msg))))
    assert 0 < len(docs) < 399
    assert messages[-1][0] == "malformed_dump" and "cut.xml.bz2" in messages[-1][1]


def test_malformed_xml_names_the_position(tmp_path):
    bad = DUMP.replace("<title>Second</title>", "<title>Second</titel>")
    path = tmp_path / "bad.xml"
    path.write_text(bad)
    messages = []
    spec = sources.resolve_sources([dict(kind="wiki_dump", path=str(path))])[0]
    docs = list(sources.iter_source(spec, lambda kind, msg: messages.append((kind, msg))))
    assert [d[0] for d in docs] == ["bad.xml:1"]
    kind, msg = messages[-1]
    assert kind == "malformed_dump" and "bad.xml: malformed XML at line" in msg and "column" in msg


def test_max_pages_and_checksum(tmp_path):
    path = tmp_path / "dump.xml"
    path.write_text(DUMP)
    spec = sources.resolve_sources([dict(kind="wiki_dump", path=str(path), max_pages=1)])[0]
    assert len(list(sources.iter_source(spec, lambda *a: None))) == 1
    spec = sources.resolve_sources([dict(kind="wiki_dump", path=str(path), sha256="00" * 32)])[0]
    with pytest.raises(DownloadError, match="sha256 is .* expected 0000"):
        list(sources.iter_source(spec, lambda *a: None))
