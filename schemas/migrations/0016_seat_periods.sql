-- The scheduler off the correctness path (meter/admin/issuance.py, meter/admin/scheduler.py).

-- Periods whose seats are issued: a row once `start_period` committed the period's seats and
-- their grants reached Redis. Whoever settles or checks first in a period (the consumer, an API
-- process) probes it once per organization and period, and issues the seats itself when the row
-- is missing; the scheduler does the same at the period start. Issuing is idempotent, so two
-- issuers that race both write the same grants and one row.
CREATE TABLE seat_periods (
    org_id        text        NOT NULL REFERENCES organizations (org_id),
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    issued_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, period_start),
    CHECK (period_end > period_start)
);

-- Charges due within seconds: a settlement transaction whose on-demand totals leave an
-- organization's uncharged on-demand usage costing at least its plan's charge threshold sends
-- `NOTIFY meter_charges, '<org id>'`; the active scheduler listens and records and publishes
-- the charge at once (`PlansStore.due_charges` decides, in Python; this only wakes it). Cost =
-- credits * price per credit, rounded down to a micro-unit, in numeric (no overflow).
CREATE FUNCTION charges_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meter_charges', d.org_id)
    FROM (
        SELECT DISTINCT t.org_id
        FROM changed t
        JOIN organizations o ON o.org_id = t.org_id
        JOIN plans p ON p.plan_id = o.plan_id
        WHERE t.on_demand > 0
          AND p.on_demand_allowed
          AND p.on_demand_price_micros IS NOT NULL
          AND p.on_demand_charge_threshold_micros IS NOT NULL
          AND div(
                (t.on_demand - coalesce((
                    SELECT max(c.through_credits) FROM charges_due c
                    WHERE c.org_id = t.org_id AND c.period_start = t.period_start
                ), 0))::numeric * p.on_demand_price_micros,
                1000000
              ) >= p.on_demand_charge_threshold_micros
    ) AS d;
    RETURN NULL;
END
$$;

CREATE TRIGGER charges_org_totals_insert AFTER INSERT ON org_period_totals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION charges_notify();
CREATE TRIGGER charges_org_totals_update AFTER UPDATE ON org_period_totals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION charges_notify();
