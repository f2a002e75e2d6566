-- A member's settlements are found through runs, one row per member and write, instead of an
-- index entry per settlement.
--
-- `settlement_runs` holds, for each statement that inserts settlements, one row per
-- (organization, member, settled_at, period start): the keys it inserted for that member, in
-- the order inserted (the read sorts them; a sort per run here would cost every write). A
-- statement trigger on `settlements` writes them from the rows the statement inserted, whoever
-- inserts (the consumer's COPY, its careful path, tools).
--
-- Why: `settlements_member` (0021), on (org_id, member_id, settled_at, key), was one more index
-- entry for every settled event, at a place of its own per member: about a quarter of
-- PostgreSQL's CPU on the settlement path. `meter bench pipeline`, three pairs: 9.4 / 9.6 / 9.4
-- us of PostgreSQL CPU an event with the runs against 11.0 / 10.3 / 9.7 with the index
-- (consumers/README.md, "A member's settlements, by run"). A write of 40,000 events over 4,000
-- members inserts 4,000 runs instead of 40,000 index entries.
--
-- Readers: `GET /v1/orgs/{org}/members/{member}/settlements` (meter/admin/history.py) walks the
-- member's runs newest first, their keys in reverse byte order, and reads each settlement by its
-- primary key. The order and the cursor are the index's were: (settled_at, key), key compared
-- as bytes. Archiving a month (meter/archive.py) deletes the month's runs with its partition.

-- A settlement's `settled_at` becomes the time of the transaction that wrote it (`now()`), not
-- the clock as each row was inserted (`clock_timestamp()`, 0002): one instant for a whole write,
-- so a write is one run per member and the runs keep the settlements' own order. Settlements
-- written before keep their instants (a run each, from the backfill below).
ALTER TABLE settlements ALTER COLUMN settled_at SET DEFAULT now();

CREATE TABLE settlement_runs (
    org_id       text COLLATE "C" NOT NULL,
    member_id    text COLLATE "C" NOT NULL,
    settled_at   timestamptz NOT NULL,
    period_start timestamptz NOT NULL,
    keys         text[] COLLATE "C" NOT NULL
);

INSERT INTO settlement_runs (org_id, member_id, settled_at, period_start, keys)
SELECT org_id, member_id, settled_at, period_start, array_agg(key ORDER BY key)
FROM settlements
GROUP BY org_id, member_id, settled_at, period_start;

CREATE INDEX settlement_runs_member ON settlement_runs (org_id, member_id, settled_at);

CREATE FUNCTION settlement_runs_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO settlement_runs (org_id, member_id, settled_at, period_start, keys)
    SELECT org_id, member_id, settled_at, period_start, array_agg(key)
    FROM new_settlements
    GROUP BY org_id, member_id, settled_at, period_start;
    RETURN NULL;
END
$$;

CREATE TRIGGER settlement_runs AFTER INSERT ON settlements
    REFERENCING NEW TABLE AS new_settlements FOR EACH STATEMENT
    EXECUTE FUNCTION settlement_runs_insert();

DROP INDEX settlements_member;
