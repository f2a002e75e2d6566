-- Settled usage, written by the settlement consumer (consumers/settle.py through meter/store.py).
--
-- One transaction per consumer batch writes the settlements, their lines, every total below and
-- the consumer offsets together, so PostgreSQL never holds a settlement without the offset that
-- covers it, nor an offset without its settlements.
--
-- Amounts are integer micro-credits. `billing_group` '' is the built-in Unassigned group.
-- A bucket's remaining credits are derivable from PostgreSQL alone:
--   grant amount - sum(settlement_lines.amount of the bucket) + credits returned by voids.

CREATE TABLE settlements (
    key             text        PRIMARY KEY,  -- CloudEvents source + id
    org_id          text        NOT NULL,
    member_id       text        NOT NULL,
    billing_group   text        NOT NULL DEFAULT '',
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    event_time      timestamptz NOT NULL,
    credits         bigint      NOT NULL CHECK (credits >= 0),
    unfunded        bigint      NOT NULL CHECK (unfunded >= 0 AND unfunded <= credits),
    member_limited  boolean     NOT NULL DEFAULT false,
    group_limited   boolean     NOT NULL DEFAULT false,
    late            boolean     NOT NULL DEFAULT false,
    reservation_id  text,
    settled_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    attributes      jsonb
);

CREATE INDEX settlements_org_period ON settlements (org_id, period_start, member_id);

-- One row per bucket an event drew from.
CREATE TABLE settlement_lines (
    key        text   NOT NULL,
    org_id     text   NOT NULL,
    bucket_id  text   NOT NULL,
    kind       text   NOT NULL CHECK (kind IN ('seat', 'personal', 'shared', 'on_demand')),
    amount     bigint NOT NULL CHECK (amount > 0),
    PRIMARY KEY (key, bucket_id)
);

-- Period totals, kept in step with `settlements` in the same transaction.
-- credits = seat + personal + shared + on_demand + unfunded.
CREATE TABLE member_period_totals (
    org_id        text        NOT NULL,
    member_id     text        NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    events        bigint      NOT NULL DEFAULT 0,
    credits       bigint      NOT NULL DEFAULT 0,
    seat          bigint      NOT NULL DEFAULT 0,
    personal      bigint      NOT NULL DEFAULT 0,
    shared        bigint      NOT NULL DEFAULT 0,
    on_demand     bigint      NOT NULL DEFAULT 0,
    unfunded      bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, member_id, period_start)
);

CREATE TABLE group_period_totals (
    org_id         text        NOT NULL,
    billing_group  text        NOT NULL,
    period_start   timestamptz NOT NULL,
    period_end     timestamptz NOT NULL,
    events         bigint      NOT NULL DEFAULT 0,
    credits        bigint      NOT NULL DEFAULT 0,
    seat           bigint      NOT NULL DEFAULT 0,
    personal       bigint      NOT NULL DEFAULT 0,
    shared         bigint      NOT NULL DEFAULT 0,
    on_demand      bigint      NOT NULL DEFAULT 0,
    unfunded       bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, billing_group, period_start)
);

CREATE TABLE org_period_totals (
    org_id        text        NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    events        bigint      NOT NULL DEFAULT 0,
    credits       bigint      NOT NULL DEFAULT 0,
    seat          bigint      NOT NULL DEFAULT 0,
    personal      bigint      NOT NULL DEFAULT 0,
    shared        bigint      NOT NULL DEFAULT 0,
    on_demand     bigint      NOT NULL DEFAULT 0,
    unfunded      bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, period_start)
);

-- Daily totals per member, by the UTC day of the event time (org daily = sum over members).
CREATE TABLE member_daily_totals (
    org_id     text   NOT NULL,
    member_id  text   NOT NULL,
    day        date   NOT NULL,
    events     bigint NOT NULL DEFAULT 0,
    credits    bigint NOT NULL DEFAULT 0,
    seat       bigint NOT NULL DEFAULT 0,
    personal   bigint NOT NULL DEFAULT 0,
    shared     bigint NOT NULL DEFAULT 0,
    on_demand  bigint NOT NULL DEFAULT 0,
    unfunded   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, member_id, day)
);

-- Where each consumer group resumes: the next offset to read per topic partition.
-- Updated only from the offset the writer expects (fencing against a stale group member).
CREATE TABLE consumer_offsets (
    group_id     text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL CHECK (partition >= 0),
    next_offset  bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
