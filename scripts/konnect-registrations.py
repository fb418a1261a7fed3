#!/usr/bin/env python3
"""Writes okta-dcr-auth's registrations document from a Konnect Dev Portal.

Reads every application of the portal (its DCR client id) and every application registration
(its API and status) through Konnect's portal API (v3), and writes

    {"applications": [{"client_id", "application_id", "developer_id", "name",
                       "registrations": [{"product", "status"}]}]}

to a file (atomically: a temporary file renamed over it) or to stdout. Serve that file over
HTTPS to the gateways (`registrations_uri`), or paste it inline (`registrations`). Run it from
cron or a loop as often as the revocation bound you want, e.g. every 10 s; an unchanged document
keeps its bytes, so a web server's ETag stays the same and the gateways get 304s.

    KONNECT_TOKEN=kpat_... scripts/konnect-registrations.py \
        --portal-id f32d905a-ed33-46a3-a093-d8f536af9a8a --out /srv/portal/registrations.json

The token (a Konnect personal or system access token that may read the portal's applications
and registrations) is read from the environment variable --token-env names (default
KONNECT_TOKEN), never from the command line, and never printed. Standard library only.

`product` in the document is, by default, the registration's API id (`api.id`): configure each
filter instance's `product` with the id of the API it fronts. `--product name-version` writes
`<api name>-<api version>` instead (readable, but it changes when the API is renamed).

Written against Konnect's v3 portal API (GET /v3/portals/{portalId}/applications and
/v3/portals/{portalId}/application-registrations, paginated with page[size] and page[number]);
it could not be run against Konnect where it was written: check its output on your portal
before relying on it (--out - prints it).
"""

import argparse
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request

PAGE_SIZE = 100
# A safety net against a pagination bug looping forever: 100 pages of 100 at least.
MAX_PAGES = 100_000


def get_pages(base, path, token, timeout):
    """Every item of a paginated Konnect list (`data`), following page[number]."""
    items = []
    for number in range(1, MAX_PAGES + 1):
        query = urllib.parse.urlencode({"page[size]": PAGE_SIZE, "page[number]": number})
        req = urllib.request.Request(
            f"{base}{path}?{query}",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": "okta-dcr-auth-konnect-registrations",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                page = json.load(resp)
        except urllib.error.HTTPError as e:
            # The status only: a body could echo request details.
            raise SystemExit(f"konnect-registrations: GET {path}: HTTP {e.code}") from None
        except (urllib.error.URLError, TimeoutError, ValueError) as e:
            raise SystemExit(f"konnect-registrations: GET {path}: {type(e).__name__}") from None
        data = page.get("data") or []
        items.extend(data)
        total = ((page.get("meta") or {}).get("page") or {}).get("total")
        if not data or len(data) < PAGE_SIZE or (isinstance(total, int) and len(items) >= total):
            return items
    raise SystemExit(f"konnect-registrations: GET {path}: more than {MAX_PAGES} pages")


def developer_of(app):
    """The developer owning an application, as the v3 objects name it (owner or developers)."""
    owner = app.get("owner") or {}
    if owner.get("id"):
        return owner["id"]
    developers = app.get("developers") or []
    if developers and isinstance(developers[0], dict):
        return developers[0].get("id")
    return None


def product_of(api, how):
    if how == "name-version":
        name, version = api.get("name"), api.get("version")
        return f"{name}-{version}" if version else name
    return api.get("id")


def build(applications, registrations, how):
    by_app = {}
    skipped = 0
    for app in applications:
        # The DCR client id Okta issued: the id okta-dcr-auth sees in Basic and in tokens.
        client_id = app.get("client_id") or app.get("dcr_client_id")
        if not client_id:
            skipped += 1  # not a DCR application (key auth, no credentials yet)
            continue
        by_app[app.get("id")] = {
            "client_id": client_id,
            "application_id": app.get("id"),
            "developer_id": developer_of(app),
            "name": app.get("name"),
            "registrations": [],
        }
    for reg in registrations:
        app = by_app.get((reg.get("application") or {}).get("id"))
        product = product_of(reg.get("api") or {}, how)
        if app is None or not product or not reg.get("status"):
            continue
        app["registrations"].append({"product": product, "status": reg["status"]})
    apps = sorted(by_app.values(), key=lambda a: a["client_id"])
    for app in apps:
        app["registrations"].sort(key=lambda r: (r["product"], r["status"]))
    return {"applications": apps}, skipped


def write(doc, out):
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n"
    if out == "-":
        sys.stdout.write(text)
        return
    try:
        with open(out, encoding="utf-8") as f:
            if f.read() == text:
                return  # unchanged: keep the file (and its ETag) as it is
    except OSError:
        pass
    directory = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".registrations.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--portal-id", required=True, help="the Dev Portal's id")
    p.add_argument(
        "--base-url",
        default="https://us.api.konghq.com",
        help="Konnect's regional API (us, eu, au, me, in): default https://us.api.konghq.com",
    )
    p.add_argument("--token-env", default="KONNECT_TOKEN", help="environment variable holding the token")
    p.add_argument("--product", choices=["id", "name-version"], default="id", help="what `product` is")
    p.add_argument("--out", default="-", help="file to write (atomically), or - for stdout")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per Konnect request")
    args = p.parse_args()
    token = os.environ.get(args.token_env)
    if not token:
        raise SystemExit(f"konnect-registrations: set {args.token_env} to a Konnect access token")
    base = args.base_url.rstrip("/")
    portal = urllib.parse.quote(args.portal_id, safe="")
    applications = get_pages(base, f"/v3/portals/{portal}/applications", token, args.timeout)
    registrations = get_pages(
        base, f"/v3/portals/{portal}/application-registrations", token, args.timeout
    )
    doc, skipped = build(applications, registrations, args.product)
    write(doc, args.out)
    print(
        f"konnect-registrations: {len(doc['applications'])} applications "
        f"({skipped} without a DCR client id left out), {len(registrations)} registrations",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
