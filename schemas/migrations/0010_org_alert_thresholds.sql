-- Alert thresholds per organization, and the shared pool's level evaluated outside settlements.
--
-- `org_alert_thresholds` holds an organization's own list of percents for a subject kind; a kind
-- without a row uses the global rows of `alert_thresholds` (0007_alerts.sql). An empty list is
-- a list of its own: that kind never alerts for the organization. Set through
-- `PUT /v1/orgs/{org}/alert-thresholds` (meter/admin/alert_thresholds.py).
--
-- The triggers of 0007 are replaced so each changed row takes its organization's percents when
-- it has them: one primary-key probe per changed row; the global list is read once per
-- statement. The shared pool's evaluation moves into `alerts_shared_pool`, which the settlement
-- trigger calls for the organizations a batch drew from and the period scheduler calls for the
-- organizations whose shared buckets expired since its last tick (meter/alerts.py), so a pool
-- that runs low because a bucket expired alerts without waiting for a draw.

CREATE TABLE org_alert_thresholds (
    org_id        text        NOT NULL REFERENCES organizations (org_id),
    subject_kind  text        NOT NULL
                              CHECK (subject_kind IN ('member', 'billing_group', 'shared_pool')),
    percents      integer[]   NOT NULL
                              CHECK (array_position(percents, NULL) IS NULL
                                     AND 0 <= ALL (percents) AND 1000 >= ALL (percents)),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, subject_kind)
);

-- Members: as in 0007, with the organization's percents when it has its own.
CREATE OR REPLACE FUNCTION alerts_member_totals() RETURNS trigger LANGUAGE plpgsql AS $$
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
        CROSS JOIN LATERAL unnest(coalesce(
            (SELECT ot.percents FROM org_alert_thresholds ot
             WHERE ot.org_id = t.org_id AND ot.subject_kind = 'member'),
            (SELECT array_agg(d.percent) FROM alert_thresholds d WHERE d.subject_kind = 'member')
        )) AS th(percent)
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

-- Billing groups: as in 0007, with the organization's percents when it has its own.
CREATE OR REPLACE FUNCTION alerts_group_totals() RETURNS trigger LANGUAGE plpgsql AS $$
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
        CROSS JOIN LATERAL unnest(coalesce(
            (SELECT ot.percents FROM org_alert_thresholds ot
             WHERE ot.org_id = t.org_id AND ot.subject_kind = 'billing_group'),
            (SELECT array_agg(d.percent) FROM alert_thresholds d
             WHERE d.subject_kind = 'billing_group')
        )) AS th(percent)
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

-- The shared pool of each organization of `orgs` (with the period of the same position in
-- `starts` and `ends`): credits left in the shared buckets valid at `at_time` against what those
-- buckets granted, at or below each of the organization's percents. Records the crossings in
-- `alerts` and returns how many were new.
CREATE FUNCTION alerts_shared_pool(orgs text[], starts timestamptz[], ends timestamptz[],
                                   at_time timestamptz) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    crossed bigint;
BEGIN
    WITH pool AS (
        SELECT o.org_id, o.period_start, o.period_end, sum(g.amount) AS granted,
               sum(g.amount - coalesce(d.drawn, 0)) AS remaining
        FROM unnest(orgs, starts, ends) AS o(org_id, period_start, period_end)
        JOIN credit_grants g ON g.org_id = o.org_id AND g.kind = 'shared'
                             AND g.valid_from <= at_time AND g.expires_at > at_time
        LEFT JOIN shared_bucket_drawn d ON d.org_id = g.org_id AND d.bucket_id = g.bucket_id
        GROUP BY 1, 2, 3
    ), ins AS (
        INSERT INTO alerts (org_id, subject_kind, subject_id, period_start, period_end, threshold,
                            amount, reference)
        SELECT p.org_id, 'shared_pool', '', p.period_start, p.period_end, th.percent,
               greatest(p.remaining, 0), p.granted
        FROM pool p
        CROSS JOIN LATERAL unnest(coalesce(
            (SELECT ot.percents FROM org_alert_thresholds ot
             WHERE ot.org_id = p.org_id AND ot.subject_kind = 'shared_pool'),
            (SELECT array_agg(d.percent) FROM alert_thresholds d
             WHERE d.subject_kind = 'shared_pool')
        )) AS th(percent)
        WHERE p.granted > 0 AND p.remaining * 100 <= p.granted * th.percent
        ORDER BY 1, 4, 6
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO crossed FROM ins;
    IF crossed > 0 THEN
        PERFORM pg_notify('meter_alerts', '');
    END IF;
    RETURN crossed;
END
$$;

-- Shared pool on settlement: as in 0007 (the period is the one of the settlements drawing),
-- evaluated by `alerts_shared_pool`.
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
        FROM (SELECT DISTINCT key FROM new_lines WHERE kind = 'shared') AS l
        JOIN settlements s USING (key)
        GROUP BY s.org_id
    ) AS t;
    PERFORM alerts_shared_pool(orgs, starts, ends, now());
    RETURN NULL;
END
$$;
