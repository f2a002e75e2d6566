"""Signed webhooks: endpoints per organization receive alerts and charges due over HTTP.

See `README.md` beside this file for the rules; `worker` delivers, `store` and `routes` are the
API's side, `rules` the pure parts (event types, Standard Webhooks signatures, retry waits),
`targets` which URLs may be reached.
"""
