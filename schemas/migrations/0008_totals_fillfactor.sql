-- Totals are updated in place by every settlement batch (meter/store.py), many times per row per
-- period. Half-filled pages leave room for the new row version on the same page, so most updates
-- are HOT: no new index entries, and the old version is pruned without a vacuum.
-- Applies to pages written from now on.

ALTER TABLE member_period_totals SET (fillfactor = 50);
ALTER TABLE group_period_totals SET (fillfactor = 50);
ALTER TABLE org_period_totals SET (fillfactor = 50);
ALTER TABLE member_daily_totals SET (fillfactor = 50);
ALTER TABLE member_group_period_totals SET (fillfactor = 50);
ALTER TABLE org_daily_totals SET (fillfactor = 50);
