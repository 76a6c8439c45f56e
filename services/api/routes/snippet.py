"""The tracking snippet of a project, ready to paste: a small async loader for the browser
tracker (tracker/t.js, served by ingest at <ingest URL>/t.js) with a queue stub, so calls made
before t.js has loaded are kept and replayed by it. See tracker/README.md."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request, status

from services.api import queries
from services.api.deps import AUTH_RESPONSES, PoolDep, ProjectDep
from services.api.models import Snippet

router = APIRouter(prefix="/api/projects/{project_id}", tags=["snippet"], responses=AUTH_RESPONSES)

LOADER = """<script>
(function (w, d, key, host) {
  var a = (w.werkstroom = w.werkstroom || { q: [] });
  if (!a.loaded) ["page", "track", "identify", "alias", "reset"].forEach(function (m) {
    a[m] = a[m] || function () { a.q.push([m].concat([].slice.call(arguments))); };
  });
  w.vibeTrack = w.vibeTrack || function () { a.track.apply(a, arguments); };
  w.vibeIdentify = w.vibeIdentify || function () { a.identify.apply(a, arguments); };
  var s = d.createElement("script");
  s.async = true; s.src = host + "/t.js";
  s.setAttribute("data-write-key", key); s.setAttribute("data-host", host);
  d.head.appendChild(s);
})(window, document, %(key)s, %(host)s);
</script>"""


def js_string(value: str) -> str:
    """A JavaScript string literal that is also safe inside an HTML <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def snippet_html(write_key: str, ingest_url: str) -> str:
    return LOADER % {"key": js_string(write_key), "host": js_string(ingest_url.rstrip("/"))}


@router.get(
    "/snippet",
    response_model=Snippet,
    summary="The tracking snippet for this project",
    description="Paste `html` into every page (ideally in <head>). It loads <ingest_url>/t.js "
    "asynchronously with the project's public write key; the ingest URL is the setting "
    "WERKSTROOM_PUBLIC_INGEST_URL (default http://HOST:INGEST_PORT).",
)
async def get_snippet(scope: ProjectDep, pool: PoolDep, request: Request) -> Snippet:
    key = await pool.run(queries.write_key, scope.project_id)
    if key is None:  # deleted since the key check
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="project not found")
    ingest_url: str = request.app.state.settings.ingest_url.rstrip("/")
    return Snippet(write_key=key, ingest_url=ingest_url, html=snippet_html(key, ingest_url))
