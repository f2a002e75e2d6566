-- `settlements_org_period` (0002) serves no query: settlements are read by key only (admin
-- lookups, voids, the alert trigger on lines), reports read the totals tables, and the rebuild
-- reads settlement_lines by bucket. Every settlement batch paid for keeping it up to date.

DROP INDEX IF EXISTS settlements_org_period;
