-- Alerts: a member or billing group crossing a share of its period limit, an organization's shared
-- pool running low. Each fires once per subject, period and threshold.
--
-- Statement-level triggers evaluate them inside the settlement transaction that changes the
-- totals (meter/store.py), from the rows that transaction touched only, and record crossings in
-- the `alerts` outbox; meter/alerts.py publishes the outbox to the alerts topic. The UNIQUE key
-- makes a crossing fire once across retries, replays and restarts. Evaluation is by level (usage
-- at or above the threshold now), so a batch that crosses 80% and 100% at once records both.
-- Amounts are integer micro-credits.

-- Thresholds, in percent. `member` and `billing_group`: counted usage at or above `percent` of
-- the period limit. `shared_pool`: credits left in the shared buckets valid now at or below
-- `percent` of what those buckets granted.
CREATE TABLE alert_thresholds (
    subject_kind  text    NOT NULL CHECK (subject_kind IN ('member', 'billing_group', 'shared_pool')),
    percent       integer NOT NULL CHECK (percent BETWEEN 0 AND 1000),
    PRIMARY KEY (subject_kind, percent)
);
INSERT INTO alert_thresholds (subject_kind, percent) VALUES
    ('member', 80), ('member', 100), ('billing_group', 80), ('billing_group', 100),
    ('shared_pool', 20);

CREATE TABLE alerts (
    alert_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id        text        NOT NULL,
    subject_kind  text        NOT NULL CHECK (subject_kind IN ('member', 'billing_group', 'shared_pool')),
    subject_id    text        NOT NULL,  -- member id, billing group id, '' for the shared pool
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    threshold     integer     NOT NULL,
    amount        bigint      NOT NULL,  -- counted usage; for the shared pool, credits left
    reference     bigint      NOT NULL,  -- the limit; for the shared pool, credits granted
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    UNIQUE (org_id, subject_kind, subject_id, period_start, threshold)
);
CREATE INDEX alerts_unpublished ON alerts (alert_id) WHERE published_at IS NULL;

-- Credits drawn from each shared bucket, net of credits voids returned to it. Kept by the
-- triggers below, so the pool's level is known without summing settlement lines.
CREATE TABLE shared_bucket_drawn (
    org_id     text   NOT NULL,
    bucket_id  text   NOT NULL,
    drawn      bigint NOT NULL,
    PRIMARY KEY (org_id, bucket_id)
);
INSERT INTO shared_bucket_drawn (org_id, bucket_id, drawn)
SELECT org_id, bucket_id, sum(amount) FROM (
    SELECT org_id, bucket_id, amount FROM settlement_lines WHERE kind = 'shared'
    UNION ALL
    SELECT v.org_id, r ->> 'bucket_id', -(r ->> 'amount')::bigint
    FROM voids v, jsonb_array_elements(v.returned) AS r
    WHERE v.voided AND r ->> 'kind' = 'shared'
) AS x
GROUP BY org_id, bucket_id;

-- Members: counted usage (all drawn credits, or shared ones only, by the plan's policy) against
-- the member's limit or the plan's default. No limit, or a limit of 0, never alerts.
CREATE FUNCTION alerts_member_totals() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    crossed bigint;
BEGIN
    WITH ins AS (
        INSERT INTO alerts (org_id, subject_kind, subject_id, period_start, period_end, threshold,
                            amount, reference)
        SELECT t.org_id, 'member', t.member_id, t.period_start, t.period_end, th.percent,
               u.used, u.lim
        FROM changed t
        JOIN members m ON m.org_id = t.org_id AND m.member_id = t.member_id
        JOIN organizations o ON o.org_id = t.org_id
        JOIN plans p ON p.plan_id = o.plan_id
        CROSS JOIN LATERAL (
            SELECT CASE WHEN p.limit_policy = 'shared' THEN t.shared
                        ELSE t.seat + t.personal + t.shared + t.on_demand END AS used,
                   coalesce(m.member_limit, p.default_member_limit) AS lim
        ) AS u
        JOIN alert_thresholds th ON th.subject_kind = 'member'
        WHERE u.lim > 0 AND u.used * 100 >= u.lim * th.percent
        ORDER BY 1, 3, 4, 6
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO crossed FROM ins;
    IF crossed > 0 THEN
        PERFORM pg_notify('meter_alerts', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER alerts_member_totals_insert AFTER INSERT ON member_period_totals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION alerts_member_totals();
CREATE TRIGGER alerts_member_totals_update AFTER UPDATE ON member_period_totals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION alerts_member_totals();

-- Billing groups: all drawn credits attributed to the group against its period limit (live
-- groups only; Unassigned has no limit).
CREATE FUNCTION alerts_group_totals() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    crossed bigint;
BEGIN
    WITH ins AS (
        INSERT INTO alerts (org_id, subject_kind, subject_id, period_start, period_end, threshold,
                            amount, reference)
        SELECT t.org_id, 'billing_group', t.billing_group, t.period_start, t.period_end,
               th.percent, t.seat + t.personal + t.shared + t.on_demand, g.period_limit
        FROM changed t
        JOIN billing_groups g ON g.org_id = t.org_id AND g.billing_group_id = t.billing_group
                              AND g.deleted_at IS NULL
        JOIN alert_thresholds th ON th.subject_kind = 'billing_group'
        WHERE g.period_limit > 0
          AND (t.seat + t.personal + t.shared + t.on_demand) * 100 >= g.period_limit * th.percent
        ORDER BY 1, 3, 4, 6
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO crossed FROM ins;
    IF crossed > 0 THEN
        PERFORM pg_notify('meter_alerts', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER alerts_group_totals_insert AFTER INSERT ON group_period_totals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION alerts_group_totals();
CREATE TRIGGER alerts_group_totals_update AFTER UPDATE ON group_period_totals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION alerts_group_totals();

-- Shared pool: new settlement lines drawn from shared buckets add to `shared_bucket_drawn`;
-- then, for each organization they touched, credits left in the shared buckets valid now are
-- compared with what those buckets granted. The period is the one of the settlements drawing.
CREATE FUNCTION alerts_settlement_lines() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    crossed bigint;
BEGIN
    INSERT INTO shared_bucket_drawn AS d (org_id, bucket_id, drawn)
    SELECT org_id, bucket_id, sum(amount) FROM new_lines WHERE kind = 'shared'
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (org_id, bucket_id) DO UPDATE SET drawn = d.drawn + excluded.drawn;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    WITH touched AS (
        SELECT s.org_id, max(s.period_start) AS period_start, max(s.period_end) AS period_end
        FROM (SELECT DISTINCT key FROM new_lines WHERE kind = 'shared') AS l
        JOIN settlements s USING (key)
        GROUP BY s.org_id
    ), pool AS (
        SELECT t.org_id, t.period_start, t.period_end, sum(g.amount) AS granted,
               sum(g.amount - coalesce(d.drawn, 0)) AS remaining
        FROM touched t
        JOIN credit_grants g ON g.org_id = t.org_id AND g.kind = 'shared'
                             AND g.valid_from <= now() AND g.expires_at > now()
        LEFT JOIN shared_bucket_drawn d ON d.org_id = g.org_id AND d.bucket_id = g.bucket_id
        GROUP BY 1, 2, 3
    ), ins AS (
        INSERT INTO alerts (org_id, subject_kind, subject_id, period_start, period_end, threshold,
                            amount, reference)
        SELECT p.org_id, 'shared_pool', '', p.period_start, p.period_end, th.percent,
               greatest(p.remaining, 0), p.granted
        FROM pool p
        JOIN alert_thresholds th ON th.subject_kind = 'shared_pool'
        WHERE p.granted > 0 AND p.remaining * 100 <= p.granted * th.percent
        ORDER BY 1, 4, 6
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO crossed FROM ins;
    IF crossed > 0 THEN
        PERFORM pg_notify('meter_alerts', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER alerts_settlement_lines AFTER INSERT ON settlement_lines
    REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT
    EXECUTE FUNCTION alerts_settlement_lines();

-- A recorded void gives its shared credits back to the pool's level.
CREATE FUNCTION alerts_void_returned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT NEW.voided OR (TG_OP = 'UPDATE' AND OLD.voided) THEN
        RETURN NULL;
    END IF;
    INSERT INTO shared_bucket_drawn AS d (org_id, bucket_id, drawn)
    SELECT NEW.org_id, r ->> 'bucket_id', -sum((r ->> 'amount')::bigint)
    FROM jsonb_array_elements(NEW.returned) AS r
    WHERE r ->> 'kind' = 'shared'
    GROUP BY 2 ORDER BY 2
    ON CONFLICT (org_id, bucket_id) DO UPDATE SET drawn = d.drawn + excluded.drawn;
    RETURN NULL;
END
$$;

CREATE TRIGGER alerts_void_returned AFTER INSERT OR UPDATE ON voids
    FOR EACH ROW EXECUTE FUNCTION alerts_void_returned();
