"""A report as a list of blocks, written as Markdown (figures beside it as PNG files) and
as one self-contained HTML file (figures embedded as base64 PNG, CSS inline): a report
that is mailed or archived alone still shows its figures."""

import base64
import html
import os


class Document:
    def __init__(self, title):
        self.title = title
        self.blocks = []

    def heading(self, text, level=2):
        self.blocks.append(("h", level, text))

    def para(self, text):
        self.blocks.append(("p", text))

    def skip(self, what, reason):
        """The one line a report prints instead of a figure or table it cannot make."""
        self.blocks.append(("skip", "%s: skipped, %s." % (what, reason.rstrip("."))))

    def table(self, header, rows):
        self.blocks.append(("table", header, rows))

    def figure(self, path, caption):
        self.blocks.append(("fig", path, caption))

    def code(self, text):
        self.blocks.append(("code", text))

    @property
    def skips(self):
        return [b[1] for b in self.blocks if b[0] == "skip"]


def _md_cell(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc):
    out = ["# %s" % doc.title, ""]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out += ["#" * b[1] + " " + b[2], ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "skip":
            out += ["*%s*" % b[1], ""]
        elif kind == "code":
            out += ["```", b[1], "```", ""]
        elif kind == "table":
            header, rows = b[1], b[2]
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "fig":
            out += ["![%s](%s)" % (os.path.basename(b[1]), os.path.basename(b[1])), "", b[2], ""]
    return "\n".join(out)


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1150px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.skip { color: #8a4b00; font-style: italic; }
.caption { color: #444; margin-top: 0.2em; margin-bottom: 1.6em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


def to_html(doc):
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
           "<title>%s</title>" % esc(doc.title), "<style>%s</style>" % CSS, "</head><body>",
           "<h1>%s</h1>" % esc(doc.title)]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out.append("<h%d>%s</h%d>" % (b[1], esc(b[2]), b[1]))
        elif kind == "p":
            out.append("<p>%s</p>" % esc(b[1]))
        elif kind == "skip":
            out.append("<p class=\"skip\">%s</p>" % esc(b[1]))
        elif kind == "code":
            out.append("<pre>%s</pre>" % esc(b[1]))
        elif kind == "table":
            out.append("<table><tr>%s</tr>" % "".join("<th>%s</th>" % esc(str(h)) for h in b[1]))
            for row in b[2]:
                out.append("<tr>%s</tr>" % "".join("<td>%s</td>" % esc(str(c)) for c in row))
            out.append("</table>")
        elif kind == "fig":
            with open(b[1], "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            out.append("<figure><img alt=\"%s\" src=\"data:image/png;base64,%s\">"
                       "<figcaption class=\"caption\">%s</figcaption></figure>"
                       % (esc(os.path.basename(b[1])), data, esc(b[2])))
    out.append("</body></html>")
    return "\n".join(out)


def write(doc, outdir):
    """Write report.md and report.html into outdir; returns their paths."""
    md = os.path.join(outdir, "report.md")
    ht = os.path.join(outdir, "report.html")
    with open(md, "w", encoding="utf-8") as f:
        f.write(to_markdown(doc) + "\n")
    with open(ht, "w", encoding="utf-8") as f:
        f.write(to_html(doc) + "\n")
    return md, ht
