"""mkdocs-gallery settings (read by mkdocs.yml's `conf_script`): a scraper for the figures an
example holds, since tokendyn's figures are matplotlib `Figure` objects that pyplot never sees,
and for the animations it writes (a `Path` to a .gif)."""

import shutil
from pathlib import Path

from matplotlib.figure import Figure
from mkdocs_gallery.scrapers import figure_md_or_html

_shown: dict[str, set[int]] = {}  # example → ids of the objects already shown


def tokendyn_scraper(block, script, **kwargs):
    """Save every new Figure (or .gif Path) among the example's global variables."""
    shown = _shown.setdefault(str(script.src_py_file), set())
    paths = []
    for value in list(script.run_vars.example_globals.values()):
        if id(value) in shown:
            continue
        if isinstance(value, Figure):
            path = next(script.run_vars.image_path_iterator)
            value.savefig(path, dpi=96)
        elif isinstance(value, Path) and value.suffix == ".gif" and value.exists():
            path = next(script.run_vars.image_path_iterator).with_suffix(".gif")
            shutil.copyfile(value, path)
        else:
            continue
        shown.add(id(value))
        paths.append(path)
    return figure_md_or_html(paths, script) if paths else ""


conf = {"image_scrapers": (tokendyn_scraper,)}
