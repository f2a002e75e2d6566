-- Signed webhooks (meter.webhooks): endpoints per organization, a message outbox filled by
-- triggers in the transaction of the source row, deliveries per message and endpoint, and a log
-- of every attempt.

CREATE TABLE webhook_endpoints (
    endpoint_id          text        PRIMARY KEY,
    org_id               text        NOT NULL REFERENCES organizations (org_id) ON DELETE CASCADE,
    url                  text        NOT NULL,
    description          text        NOT NULL DEFAULT '',
    event_types          text[]      NOT NULL,
    secret               text        NOT NULL,
    -- After a rotation the previous secret signs alongside the new one until it expires.
    previous_secret      text,
    previous_expires_at  timestamptz,
    enabled              boolean     NOT NULL DEFAULT true,
    failing_since        timestamptz,  -- a delivery exhausted its retries; cleared by a success
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id);

-- One message per source row: `source` names it (`alert:<alert_id>`, `charge:<org>:<charge>`,
-- `test:<random>`); `payload` is rendered by the worker from the source row (NULL until then),
-- so the one encoder of each event stays in Python.
CREATE TABLE webhook_messages (
    message_id   text        PRIMARY KEY,
    org_id       text        NOT NULL,
    event_type   text        NOT NULL,
    source       text        NOT NULL UNIQUE,
    payload      jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_messages_unrendered ON webhook_messages (created_at) WHERE payload IS NULL;
CREATE INDEX webhook_messages_org ON webhook_messages (org_id, created_at);

CREATE TABLE webhook_deliveries (
    message_id       text        NOT NULL REFERENCES webhook_messages (message_id) ON DELETE CASCADE,
    endpoint_id      text        NOT NULL REFERENCES webhook_endpoints (endpoint_id) ON DELETE CASCADE,
    state            text        NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'succeeded', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id);

CREATE TABLE webhook_attempts (
    attempt_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       text        NOT NULL,
    endpoint_id      text        NOT NULL REFERENCES webhook_endpoints (endpoint_id) ON DELETE CASCADE,
    attempt          integer     NOT NULL,
    status_code      integer,
    error            text,
    duration_ms      integer     NOT NULL,
    at               timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz  -- NULL: no retry follows (success, or retries exhausted)
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, attempt_id DESC);

-- Queue `p_type` for the enabled endpoints of `p_org` that subscribe to it (the type itself, or
-- `alert.*` for every alert). No message when nobody listens.
CREATE FUNCTION webhook_enqueue(p_org text, p_type text, p_source text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    msg text;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM webhook_endpoints e
        WHERE e.org_id = p_org AND e.enabled
          AND (p_type = ANY (e.event_types)
               OR (p_type LIKE 'alert.%' AND 'alert.*' = ANY (e.event_types)))
    ) THEN
        RETURN;
    END IF;
    msg := 'msg_' || replace(gen_random_uuid()::text, '-', '');
    INSERT INTO webhook_messages (message_id, org_id, event_type, source)
    VALUES (msg, p_org, p_type, p_source)
    ON CONFLICT (source) DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO webhook_deliveries (message_id, endpoint_id)
    SELECT msg, e.endpoint_id FROM webhook_endpoints e
    WHERE e.org_id = p_org AND e.enabled
      AND (p_type = ANY (e.event_types)
           OR (p_type LIKE 'alert.%' AND 'alert.*' = ANY (e.event_types)));
    PERFORM pg_notify('meter_webhooks', p_org);
END;
$$;

CREATE FUNCTION webhook_alert_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_enqueue(
        NEW.org_id,
        'alert.' || CASE NEW.subject_kind
            WHEN 'member' THEN 'member_limit'
            WHEN 'billing_group' THEN 'billing_group_limit'
            WHEN 'shared_pool' THEN 'shared_pool_low'
            WHEN 'quarantine' THEN 'org_quarantined'
            ELSE NEW.subject_kind
        END,
        'alert:' || NEW.alert_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER webhook_alerts AFTER INSERT ON alerts
FOR EACH ROW EXECUTE FUNCTION webhook_alert_inserted();

CREATE FUNCTION webhook_charge_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_enqueue(NEW.org_id, 'charge.due', 'charge:' || NEW.org_id || ':' || NEW.charge_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER webhook_charges AFTER INSERT ON charges_due
FOR EACH ROW EXECUTE FUNCTION webhook_charge_inserted();
