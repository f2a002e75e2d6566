-- Dead letters per organization, so an organization's admin can list what never settled
-- (`GET /v1/orgs/{org}/dead-letters`, `meter dlq list`).
--
-- The settlement consumer records every dead letter whose organization it can read from the
-- event (`data.org_id`, or the record key the producers set to the org id) right after the
-- dead-letter topic acknowledged it (consumers/dlq.py `record_dead_letters`). The topic stays the
-- complete record (and what `meter dlq replay` reads); this table is its index for reading.
-- A record read twice (a batch re-read after a restart) is one row: the source position is
-- unique. `event` keeps at most the first 16 KiB of the record's value, as text.
-- Retention: rows older than 30 days are deleted when new ones are recorded.
-- No foreign key to organizations: an event may name an organization that does not exist.
CREATE TABLE dead_letters (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id      text        NOT NULL,
    reason      text        NOT NULL,
    detail      text        NOT NULL,
    event       text        NOT NULL,
    truncated   boolean     NOT NULL DEFAULT false,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, partition, "offset")
);

CREATE INDEX dead_letters_org ON dead_letters (org_id, id DESC);
CREATE INDEX dead_letters_created ON dead_letters (created_at);
