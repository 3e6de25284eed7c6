"""The web console at `/` of the API server: status, live metrics, a playground and analyses, in one page.

The page and its static files (`static/`, shipped in the package, no CDN) are open; every data route under
`/console/api/` needs one of API_KEYS, as /v1 does. `agentic.api.app` adds `routes.router` next to the others.
"""
