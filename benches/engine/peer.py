#!/usr/bin/env python3
"""The Python peer of the engine benchmark: a plain message trace collector, written as a user of
`requests` would write one. It asks for a token, follows the next links page by page, adds `_time`
(epoch seconds of the received time) to every row and appends the rows as NDJSON to a file.
Sequential, no retries, no checkpoint: the least a collector does.

    peer.py graph|reporting FIRST_URL TOKEN_URL SCOPE OUT

Prints `RESULT {"pages": N, "rows": N}` at the end (the bench's child protocol).
"""

import json
import sys
from datetime import datetime, timezone
from urllib.parse import urljoin

import requests


def epoch(received, api):
    # Graph: 2026-01-20T10:00:00.1234567Z; Reporting: 2026-01-20T10:00:00.1234567 (UTC).
    text = received.rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = head + "." + frac[:6]
    t = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return t.timestamp()


def main():
    api, url, token_url, scope, out = sys.argv[1:6]
    session = requests.Session()
    token = session.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": "sim-client",
            "client_secret": "sim-secret",
            "scope": scope,
        },
    )
    token.raise_for_status()
    session.headers["Authorization"] = "Bearer " + token.json()["access_token"]
    received = "receivedDateTime" if api == "graph" else "Received"
    next_key = "@odata.nextLink" if api == "graph" else "odata.nextLink"
    pages = rows = 0
    with open(out, "w", encoding="utf-8") as f:
        while url:
            r = session.get(url, headers={"Accept": "application/json"})
            r.raise_for_status()
            body = r.json()
            for row in body["value"]:
                row["_time"] = epoch(row[received], api)
                f.write(json.dumps(row))
                f.write("\n")
                rows += 1
            pages += 1
            link = body.get(next_key)
            url = urljoin(url, link) if link else None
    print("RESULT " + json.dumps({"pages": pages, "rows": rows}))


if __name__ == "__main__":
    main()
