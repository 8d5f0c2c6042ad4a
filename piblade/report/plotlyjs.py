"""plotly.js for the report page: the smallest bundle that draws its charts, installed with piblade.

The bundle (npm's ``plotly.js-basic-dist-min``: scatter, bar and pie, ~1.2 MB)
is not in the repository: ``make`` fetches it once by name at a pinned version
and checks its SHA-512 (``scripts/plotly-bundle.sh``), into
``piblade/report/vendor/``, from where a piblade install carries it as package
data. PyPI's ``plotly`` carries only the full bundle (~4.6 MB), which would
make every report four times larger than the charts need.

A piblade installed without it still works for everything but ``report``,
which then says how to get it.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from piblade.errors import PibladeError

BUNDLE = "plotly-basic.min.js"
_VERSION_RE = re.compile(r"plotly\.js \(basic - minified\) v(\S+)")


class PlotlyMissing(PibladeError):
    """plotly.js is not installed with this piblade, so no report page can be made."""


@functools.cache
def bundle(package: str = "piblade.report") -> str:
    """The bundle's text, safe to put inside an inline ``<script>``."""
    source = resources.files(package).joinpath("vendor", BUNDLE)
    try:
        text = source.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise PlotlyMissing(
            "plotly.js is not installed with this piblade, so `piblade report` cannot draw its charts",
            hint="in the piblade checkout run `make plotly` (fetches the pinned bundle with npm: "
                 "`sudo apt-get install npm` first if it is missing), then reinstall piblade",
        ) from exc
    if not _VERSION_RE.search(text[:300]):
        raise PlotlyMissing(f"{source} is not plotly.js's basic bundle",
                            hint="run `make plotly` in the piblade checkout to fetch it again")
    return text.replace("</script", "<\\/script")


def version() -> str:
    match = _VERSION_RE.search(bundle()[:300])
    return match.group(1) if match else "?"
