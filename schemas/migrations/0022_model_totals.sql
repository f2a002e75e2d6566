-- Rated usage per model and dimension, per member and period: the totals behind
-- `GET /v1/orgs/{org}/reports/models` and the `models` of a member report (meter/rating/report.py).
--
-- Kept in step with the settlements like the period totals of 0002 and 0004: the batch write adds
-- the rated settlements it inserts (`settlements.rating` of 0020), a void takes its settlement
-- back out (meter/store.py), in the same transactions. So reports by model keep answering for
-- months whose settlements were archived (0017), as the other reports do.
--
-- `model_period_totals`: events and the micro-credits they were charged (each rounded once).
-- `model_dimension_period_totals`: per dimension the quantity and the exact credits of the
-- rating lines (a decimal number of credits, unrounded).

CREATE TABLE model_period_totals (
    org_id        text        NOT NULL,
    period_start  timestamptz NOT NULL,
    member_id     text        NOT NULL,
    model         text        NOT NULL,
    events        bigint      NOT NULL,
    credits       bigint      NOT NULL,
    PRIMARY KEY (org_id, period_start, member_id, model)
);

CREATE TABLE model_dimension_period_totals (
    org_id        text        NOT NULL,
    period_start  timestamptz NOT NULL,
    member_id     text        NOT NULL,
    model         text        NOT NULL,
    dimension     text        NOT NULL,
    quantity      numeric     NOT NULL,
    credits       numeric     NOT NULL,
    PRIMARY KEY (org_id, period_start, member_id, model, dimension)
);

-- What was rated before this migration, voided settlements left out.
INSERT INTO model_period_totals (org_id, period_start, member_id, model, events, credits)
SELECT s.org_id, s.period_start, s.member_id, s.rating->>'model', count(*), sum(s.credits)
FROM settlements s
WHERE s.rating IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM voids v WHERE v.org_id = s.org_id AND v.event_key = s.key AND v.voided
)
GROUP BY 1, 2, 3, 4;

INSERT INTO model_dimension_period_totals
    (org_id, period_start, member_id, model, dimension, quantity, credits)
SELECT s.org_id, s.period_start, s.member_id, s.rating->>'model', l->>'dimension',
       sum((l->>'quantity')::numeric), sum((l->>'credits')::numeric)
FROM settlements s, jsonb_array_elements(s.rating->'lines') AS l
WHERE s.rating IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM voids v WHERE v.org_id = s.org_id AND v.event_key = s.key AND v.voided
)
GROUP BY 1, 2, 3, 4, 5;
