"""Reporting over settled usage: totals, daily series and the CSV export (DESIGN 2.9).

Reads PostgreSQL only, and only the totals tables the settlement store keeps in step with the
settlements (never `settlements` itself, never Redis). Rules: README.md in this folder.
"""

from meter.reports.export import HEADER, export, stream_csv
from meter.reports.service import ReportingPeriod, Reports, billing_group_filter, resolve_period

__all__ = [
    "HEADER",
    "ReportingPeriod",
    "Reports",
    "billing_group_filter",
    "export",
    "resolve_period",
    "stream_csv",
]
