"""Administration: plans, organizations, members, groups, billing groups, grants, keys, voids.

PostgreSQL is written first; the engine (Redis) is updated after the commit; the reconciler
repairs Redis from PostgreSQL when an apply failed or state drifted.
"""

from meter.admin.reconcile import reconcile_all, reconcile_org, run_reconciler
from meter.admin.service import AdminService

__all__ = ["AdminService", "reconcile_all", "reconcile_org", "run_reconciler"]
