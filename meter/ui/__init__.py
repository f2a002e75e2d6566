"""The organization dashboard: static pages served by the API process at `/ui/`."""
