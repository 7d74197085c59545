"""mkdocs hooks (mkdocs.yml `hooks:`): math like Γ[μ](x_i) is text, not a link.

Markdown reads `[μ](x)` as a link to a file `x`; in these pages and docstrings it is always a
functional applied to a point. An inline pattern, tried before links (and never inside code),
keeps `[text](target)` as literal text when the target is a bare symbol: one letter with an
optional subscript (x, x_i, y_j). Every other link is left to Markdown and validated as usual.
"""

import re

from markdown import Extension, Markdown
from markdown.inlinepatterns import InlineProcessor
from mkdocs.plugins import event_priority

SYMBOL_LINK = r"\[([^\]\n]*)\]\(([A-Za-z](?:_[A-Za-z0-9]+)?)\)"
LINK_PRIORITY = 160  # markdown's own link pattern; backticks (code) are tried first, at 190


class _SymbolLink(InlineProcessor):
    def handleMatch(self, m: re.Match, data: str) -> tuple[str, int, int]:
        return m.group(0), m.start(0), m.end(0)


class MathBrackets(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        md.inlinePatterns.register(_SymbolLink(SYMBOL_LINK, md), "symbol_link", LINK_PRIORITY + 1)


@event_priority(100)  # before mkdocstrings reads the extensions for the docstrings
def on_config(config):
    config.markdown_extensions.append(MathBrackets())
    return config
