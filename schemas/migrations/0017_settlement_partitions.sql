-- Settlements partitioned by period: `settlements` and `settlement_lines` become range-partitioned
-- on `period_start`, one partition per UTC calendar month (`settlements_YYYY_MM`,
-- `settlement_lines_YYYY_MM`) plus a DEFAULT partition each for whatever no monthly partition
-- covers. Closed months are verified against the totals, written to a file and detached by
-- `meter archive` (meter/archive.py); reports read the totals tables, which stay unpartitioned.
--
-- Identity. PostgreSQL requires the partition key in every unique constraint, so the primary
-- keys become (org_id, key, period_start) and (org_id, key, period_start, bucket_id). That alone
-- would not keep an event from settling twice: an event's period is not a function of the event
-- (a late event settles into its own period while that period is in its grace window, into the
-- current one afterwards, flagged `late`; an organization's anchor or plan may change), so a
-- redelivery may carry another period_start; and an archived month's partition is gone. The
-- identity moves to `settlement_keys`: one narrow row per settled (org_id, key), unpartitioned and
-- never archived. meter/store.py writes it first, in the settlement's transaction; a key already
-- there is a unique violation there, and the batch is written again the careful way, skipping the
-- keys `settlement_keys` already holds (ON CONFLICT DO NOTHING). The lookups by (org_id, key)
-- (the consumer's `existing_keys`) read it too.
--
-- Lines carry their settlement's `period_start` (the store knows it), so a line lives in the same
-- month as its settlement and the two are archived together.
--
-- Partitions ahead: `meter_ensure_partitions(from, months)` creates the monthly partitions of
-- `months` months from the month of `from` (those already there, or already archived, are left
-- alone; rows the DEFAULT partition holds for a new month are moved into it). This migration
-- creates the months of the existing data up to two months ahead; the store calls it for the
-- months its batches write (meter/store.py), so the DEFAULT partitions stay empty in practice.
--
-- Triggers. The shared-pool trigger of 0007/0010/0011 (`alerts_settlement_lines`) is a
-- statement-level trigger with a transition table; PostgreSQL accepts those on a partitioned
-- table (the transition table holds the rows routed to every partition; only row-level triggers
-- with transition tables are refused, on partitions). It is recreated on the new table, with its
-- join to `settlements` made by (org_id, key, period_start). The totals triggers (0007, 0010,
-- 0016) are on the totals tables and unchanged.
--
-- Data of an existing install is moved: the old tables are renamed, the partitioned ones created
-- with `LIKE` (so columns another migration added to `settlements` come along), the rows copied,
-- the old tables dropped. `ALTER TABLE settlements ADD COLUMN` keeps working on the partitioned
-- table (it reaches every partition).

-- Where each month went: written by `meter archive` in the transaction that detaches the
-- month's partitions. A month listed here is skipped by later runs and never recreated.
CREATE TABLE settlement_archives (
    month         date        PRIMARY KEY,  -- the first day of the UTC month
    file          text        NOT NULL,
    sha256        text        NOT NULL,
    settlements   bigint      NOT NULL,
    lines         bigint      NOT NULL,
    credits       bigint      NOT NULL,
    kept          boolean     NOT NULL,     -- partitions detached and kept (else dropped)
    archived_at   timestamptz NOT NULL DEFAULT now()
);

-- Credits archived lines drew from each bucket, so a bucket's remaining credits stay derivable
-- once its older lines are archived (meter/rebuild.py adds it to the lines it still holds).
CREATE TABLE archived_bucket_drawn (
    org_id     text   NOT NULL,
    bucket_id  text   NOT NULL,
    drawn      bigint NOT NULL,
    PRIMARY KEY (org_id, bucket_id)
);

CREATE TABLE settlement_keys (
    org_id        text        NOT NULL,
    key           text        NOT NULL,
    period_start  timestamptz NOT NULL,
    PRIMARY KEY (org_id, key)
);

ALTER TABLE settlements RENAME TO settlements_0016;
ALTER INDEX settlements_pkey RENAME TO settlements_0016_pkey;
ALTER TABLE settlement_lines RENAME TO settlement_lines_0016;
ALTER INDEX settlement_lines_pkey RENAME TO settlement_lines_0016_pkey;

CREATE TABLE settlements (
    LIKE settlements_0016
        INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE
        INCLUDING COMMENTS
) PARTITION BY RANGE (period_start);

CREATE TABLE settlement_lines (
    LIKE settlement_lines_0016
        INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE
        INCLUDING COMMENTS,
    period_start  timestamptz NOT NULL
) PARTITION BY RANGE (period_start);

CREATE TABLE settlements_default PARTITION OF settlements DEFAULT;
CREATE TABLE settlement_lines_default PARTITION OF settlement_lines DEFAULT;

-- The monthly partitions of `months` UTC months from the month of `from_time`, for both tables.
-- Returns how many partitions it created. Safe to call concurrently (an advisory lock orders the
-- callers) and often (a month already there costs one catalog lookup).
CREATE FUNCTION meter_ensure_partitions(from_time timestamptz, months integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    first_month timestamp := date_trunc('month', from_time AT TIME ZONE 'UTC');
    lo timestamptz;
    hi timestamptz;
    parent text;
    part text;
    created integer := 0;
BEGIN
    -- pg_advisory_xact_lock key: hashtext of the function's name, stable across calls.
    PERFORM pg_advisory_xact_lock(hashtext('meter_ensure_partitions'));
    FOR i IN 0 .. months - 1 LOOP
        lo := (first_month + make_interval(months => i)) AT TIME ZONE 'UTC';
        hi := (first_month + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM settlement_archives WHERE month = (lo AT TIME ZONE 'UTC')::date
        );
        FOREACH parent IN ARRAY ARRAY['settlements', 'settlement_lines'] LOOP
            part := parent || '_' || to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
            CONTINUE WHEN to_regclass(part) IS NOT NULL;
            EXECUTE format(
                'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
                ' INCLUDING GENERATED INCLUDING STORAGE)', part, parent);
            EXECUTE format(
                'WITH moved AS (DELETE FROM %I WHERE period_start >= $1 AND period_start < $2'
                ' RETURNING *) INSERT INTO %I SELECT * FROM moved',
                parent || '_default', part) USING lo, hi;
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, part, lo, hi);
            created := created + 1;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

DO $$
DECLARE
    first_ts timestamptz;
    last_ts timestamptz;
    months integer;
BEGIN
    SELECT least(min(period_start), now() - interval '1 month'), greatest(max(period_start), now())
    INTO first_ts, last_ts FROM settlements_0016;
    months := (extract(year FROM last_ts AT TIME ZONE 'UTC')::integer
               - extract(year FROM first_ts AT TIME ZONE 'UTC')::integer) * 12
            + extract(month FROM last_ts AT TIME ZONE 'UTC')::integer
            - extract(month FROM first_ts AT TIME ZONE 'UTC')::integer + 3;
    PERFORM meter_ensure_partitions(first_ts, months);
END
$$;

INSERT INTO settlements SELECT * FROM settlements_0016;
INSERT INTO settlement_lines SELECT l.*, s.period_start
FROM settlement_lines_0016 l JOIN settlements_0016 s ON s.org_id = l.org_id AND s.key = l.key;
INSERT INTO settlement_keys (org_id, key, period_start)
SELECT org_id, key, period_start FROM settlements_0016;

DROP TABLE settlement_lines_0016;
DROP TABLE settlements_0016;

ALTER TABLE settlements ADD PRIMARY KEY (org_id, key, period_start);
ALTER TABLE settlement_lines ADD PRIMARY KEY (org_id, key, period_start, bucket_id);

-- Shared pool on settlement (0011), joining the lines to their settlements within their month.
CREATE OR REPLACE FUNCTION alerts_settlement_lines() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    orgs text[];
    starts timestamptz[];
    ends timestamptz[];
BEGIN
    INSERT INTO shared_bucket_drawn AS d (org_id, bucket_id, drawn)
    SELECT org_id, bucket_id, sum(amount) FROM new_lines WHERE kind = 'shared'
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (org_id, bucket_id) DO UPDATE SET drawn = d.drawn + excluded.drawn;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(t.org_id), array_agg(t.period_start), array_agg(t.period_end)
    INTO orgs, starts, ends
    FROM (
        SELECT s.org_id, max(s.period_start) AS period_start, max(s.period_end) AS period_end
        FROM (SELECT DISTINCT org_id, key, period_start FROM new_lines WHERE kind = 'shared') AS l
        JOIN settlements s USING (org_id, key, period_start)
        GROUP BY s.org_id
    ) AS t;
    PERFORM alerts_shared_pool(orgs, starts, ends, now());
    RETURN NULL;
END
$$;

CREATE TRIGGER alerts_settlement_lines AFTER INSERT ON settlement_lines
    REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT
    EXECUTE FUNCTION alerts_settlement_lines();
