-- Voids in the settled totals (meter/store.py `record_void`).
--
-- Recording a void subtracts its settlement (events, credits, per-kind amounts, unfunded) from
-- every total of 0002 and 0004, in the transaction that records it; `returned` keeps the credits
-- put back per bucket, so a bucket's remaining credits stay derivable from PostgreSQL alone:
--   grant amount - sum(settlement_lines.amount) + sum(returned amounts of voids).
-- A void of an event whose settlement PostgreSQL does not hold yet (settled in Redis, its batch
-- still being written) is recorded with `totals_pending`; the batch that writes the settlement
-- subtracts it and clears the flag.

ALTER TABLE voids ADD COLUMN totals_pending boolean NOT NULL DEFAULT false;

CREATE INDEX voids_totals_pending ON voids (event_key) WHERE totals_pending;
