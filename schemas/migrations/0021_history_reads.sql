-- Reads of history and the `dead_letter` webhook.
--
-- `GET /v1/orgs/{org}/alerts` pages an organization's alerts newest first; the unique key of
-- `alerts` leads with the organization but is ordered by subject, so the page needs its own.
CREATE INDEX alerts_org ON alerts (org_id, alert_id);

-- `GET /v1/orgs/{org}/members/{member}/settlements` pages a member's settlements newest first
-- (by `settled_at`, then key). Settlements are otherwise read by key only; this index is the
-- one more entry each settled event writes.
CREATE INDEX settlements_member ON settlements (org_id, member_id, settled_at, key);

-- Retention (the period scheduler deletes rows older than 30 days, a bounded batch per tick).
CREATE INDEX webhook_messages_created ON webhook_messages (created_at);
CREATE INDEX webhook_attempts_at ON webhook_attempts (at);

-- Each dead letter of an organization queues one `dead_letter` message for the endpoints that
-- subscribe to it, in the transaction that records it (a row recorded twice is one row, so one
-- message). The worker renders its body from the row (meter/webhooks/dead_letters.py).
CREATE FUNCTION webhook_dead_letter_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_enqueue(NEW.org_id, 'dead_letter', 'dead_letter:' || NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER webhook_dead_letters AFTER INSERT ON dead_letters
FOR EACH ROW EXECUTE FUNCTION webhook_dead_letter_inserted();
