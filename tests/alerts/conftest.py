"""The API application and its admin client, for the alert tests that go through the API."""

from api.conftest import admin, app

__all__ = ["admin", "app"]
