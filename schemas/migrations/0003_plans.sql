-- Plans beyond the `plans` columns, seat billing, seat-month balance, redemption codes, seat
-- occupancy per period, expiry entries and charge-due records (meter/plans).
-- Seat-months are BIGINT micro-seat-months (1 seat for 1 period = 1,000,000); credits BIGINT
-- micro-credits; money BIGINT micro-units of currency.

-- Plan settings the `plans` table does not hold (see meter/plans/README.md), as a JSON object.
CREATE TABLE plan_settings (
    plan_id   text PRIMARY KEY REFERENCES plans (plan_id),
    settings  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object')
);

-- How an organization pays its seats. No row: 'external' (outside the service, always paid).
CREATE TABLE org_seat_billing (
    org_id        text PRIMARY KEY REFERENCES organizations (org_id),
    seat_billing  text NOT NULL CHECK (seat_billing IN ('external', 'balance')),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Per-member on-demand cap per period, set by the admin. No row: the plan's default cap.
CREATE TABLE member_on_demand_caps (
    org_id      text NOT NULL,
    member_id   text NOT NULL,
    cap         bigint NOT NULL CHECK (cap >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, member_id),
    FOREIGN KEY (org_id, member_id) REFERENCES members (org_id, member_id)
);

-- Redemption codes, by the SHA-256 of their text; `code_id` is the public, stable id.
-- `bound_org_id` set: only that organization may redeem it. Single use: `redeemed_at` is set once.
CREATE TABLE redemption_codes (
    code_hash        bytea PRIMARY KEY,
    code_id          text NOT NULL UNIQUE,
    kind             text NOT NULL
                     CHECK (kind IN ('seat_months_monthly', 'seat_months_annual', 'shared_credits')),
    seat_months      integer NOT NULL DEFAULT 0 CHECK (seat_months >= 0),
    credits          bigint NOT NULL DEFAULT 0 CHECK (credits >= 0),
    validity_months  integer NOT NULL DEFAULT 3 CHECK (validity_months >= 1),
    bound_org_id     text REFERENCES organizations (org_id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    redeemed_org_id  text REFERENCES organizations (org_id),
    redeemed_at      timestamptz,
    CHECK ((redeemed_at IS NULL) = (redeemed_org_id IS NULL)),
    CHECK (kind <> 'seat_months_annual' OR seat_months % 12 = 0)
);

-- The seat-month balance: one lot per monthly code, twelve per annual code (its installments,
-- frozen until `available_from`). A lot is usable while available_from <= t < expires_at.
CREATE TABLE seat_month_lots (
    org_id          text NOT NULL REFERENCES organizations (org_id),
    lot_id          text NOT NULL,
    code_id         text NOT NULL REFERENCES redemption_codes (code_id),
    installment     integer NOT NULL DEFAULT 0 CHECK (installment BETWEEN 0 AND 11),
    amount          bigint NOT NULL CHECK (amount > 0),
    remaining       bigint NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    available_from  timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (org_id, lot_id),
    CHECK (expires_at > available_from)
);
CREATE INDEX seat_month_lots_expiry ON seat_month_lots (org_id, expires_at);

-- A seat billed for a period: one row per member and period, kept when the member leaves.
CREATE TABLE seat_occupancy (
    org_id        text NOT NULL REFERENCES organizations (org_id),
    member_id     text NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    seated_from   timestamptz NOT NULL,
    fraction      bigint NOT NULL CHECK (fraction >= 0),
    billing       text NOT NULL CHECK (billing IN ('external', 'balance')),
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, member_id, period_start),
    FOREIGN KEY (org_id, member_id) REFERENCES members (org_id, member_id),
    CHECK (period_start <= seated_from AND period_end > period_start)
);

-- Seat-months drawn from each lot to pay a seat.
CREATE TABLE seat_month_draws (
    org_id        text NOT NULL,
    member_id     text NOT NULL,
    period_start  timestamptz NOT NULL,
    lot_id        text NOT NULL,
    amount        bigint NOT NULL CHECK (amount > 0),
    PRIMARY KEY (org_id, member_id, period_start, lot_id),
    FOREIGN KEY (org_id, member_id, period_start)
        REFERENCES seat_occupancy (org_id, member_id, period_start),
    FOREIGN KEY (org_id, lot_id) REFERENCES seat_month_lots (org_id, lot_id)
);

-- Unused remainders of expired buckets (kind/member as in credit_grants), one row per bucket.
CREATE TABLE expiry_entries (
    org_id      text NOT NULL REFERENCES organizations (org_id),
    bucket_id   text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('seat', 'personal', 'shared', 'on_demand')),
    member_id   text,
    amount      bigint NOT NULL CHECK (amount > 0),
    expired_at  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, bucket_id)
);

-- On-demand charges due, an outbox for the billing topic: `published_at` is set once sent.
CREATE TABLE charges_due (
    org_id           text NOT NULL REFERENCES organizations (org_id),
    charge_id        text NOT NULL,
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    reason           text NOT NULL CHECK (reason IN ('threshold', 'period_end')),
    credits          bigint NOT NULL CHECK (credits > 0),
    through_credits  bigint NOT NULL CHECK (through_credits >= credits),
    amount_micros    bigint NOT NULL CHECK (amount_micros >= 0),
    due_at           timestamptz NOT NULL,
    published_at     timestamptz,
    PRIMARY KEY (org_id, charge_id)
);
CREATE INDEX charges_due_unpublished ON charges_due (due_at) WHERE published_at IS NULL;
