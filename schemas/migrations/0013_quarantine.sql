-- Quarantine: an organization whose PostgreSQL state cannot be applied to Redis (a rebuild or a
-- settlement met a value the engine refuses, or any other error that is not a server being
-- away) is set aside so that it cannot stop the others. While it is here its Redis state is
-- absent: checks answer 503 `org_quarantined`, its events are dead-lettered with that reason.
-- `meter quarantine release ORG` rebuilds it and, on success, deletes its row.
CREATE TABLE quarantined_orgs (
    org_id   text        PRIMARY KEY REFERENCES organizations (org_id),
    reason   text        NOT NULL,  -- a stable code: engine_input, data_error, engine_error, error
    details  text        NOT NULL,  -- what failed, for the operator
    since    timestamptz NOT NULL DEFAULT now()
);

-- A quarantine raises an alert (kind `org_quarantined`) through the same outbox. Its row has
-- subject kind 'quarantine', subject id '', period start = end = the quarantine's start,
-- threshold 0, amount and reference 0; `detail` carries the reason code.
ALTER TABLE alerts DROP CONSTRAINT alerts_subject_kind_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_subject_kind_check
    CHECK (subject_kind IN ('member', 'billing_group', 'shared_pool', 'quarantine'));
ALTER TABLE alerts ADD COLUMN detail text;
