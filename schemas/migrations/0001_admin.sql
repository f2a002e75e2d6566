-- Administration data: plans, organizations, members, groups, billing groups, credit grants,
-- API keys and voids. PostgreSQL is the source of truth; Redis is derived from these rows.
-- Amounts are BIGINT micro-credits (1 credit = 1,000,000); money is BIGINT micro-units of currency.

CREATE TABLE plans (
    plan_id                   text PRIMARY KEY CHECK (plan_id <> ''),
    name                      text NOT NULL,
    period_kind               text NOT NULL CHECK (period_kind IN ('monthly', 'rolling')),
    rolling_days              integer NOT NULL DEFAULT 30 CHECK (rolling_days BETWEEN 1 AND 3660),
    seat_credits              bigint NOT NULL DEFAULT 0 CHECK (seat_credits >= 0),
    prorate                   boolean NOT NULL DEFAULT true,
    limit_policy              text NOT NULL DEFAULT 'all' CHECK (limit_policy IN ('all', 'shared')),
    -- NULL: a member without a limit of their own is unlimited; 0: may not use counted credits.
    default_member_limit      bigint CHECK (default_member_limit >= 0),
    billing_groups_allowed    boolean NOT NULL DEFAULT true,
    on_demand_allowed         boolean NOT NULL DEFAULT false,
    on_demand_member_cap      bigint CHECK (on_demand_member_cap >= 0),
    on_demand_price_micros    bigint CHECK (on_demand_price_micros >= 0),
    on_demand_charge_threshold_micros bigint CHECK (on_demand_charge_threshold_micros >= 0),
    created_at                timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE organizations (
    org_id          text PRIMARY KEY CHECK (org_id <> ''),
    name            text NOT NULL,
    plan_id         text NOT NULL REFERENCES plans (plan_id),
    billing_anchor  timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'expired', 'suspended')),
    grace_seconds   integer NOT NULL DEFAULT 0 CHECK (grace_seconds >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The built-in `Unassigned` group is not a row: a member with billing_group_id NULL is in it.
-- Deleted groups keep their row (deleted_at set) so settled history still names them.
CREATE TABLE billing_groups (
    org_id            text NOT NULL REFERENCES organizations (org_id),
    billing_group_id  text NOT NULL CHECK (billing_group_id <> ''),
    name              text NOT NULL,
    description       text NOT NULL DEFAULT '',
    period_limit      bigint CHECK (period_limit >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    PRIMARY KEY (org_id, billing_group_id)
);
CREATE UNIQUE INDEX billing_groups_live_name
    ON billing_groups (org_id, lower(name)) WHERE deleted_at IS NULL;

CREATE TABLE members (
    org_id            text NOT NULL REFERENCES organizations (org_id),
    member_id         text NOT NULL CHECK (member_id <> ''),
    name              text NOT NULL DEFAULT '',
    email             text NOT NULL DEFAULT '',
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'removed')),
    seated            boolean NOT NULL DEFAULT true,
    seated_since      timestamptz,
    member_limit      bigint CHECK (member_limit >= 0),
    billing_group_id  text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, member_id),
    FOREIGN KEY (org_id, billing_group_id) REFERENCES billing_groups (org_id, billing_group_id)
);
CREATE INDEX members_billing_group ON members (org_id, billing_group_id);

-- Functional groups: many-to-many, never affect credits, limits or attribution.
CREATE TABLE groups (
    org_id       text NOT NULL REFERENCES organizations (org_id),
    group_id     text NOT NULL CHECK (group_id <> ''),
    name         text NOT NULL CHECK (name <> ''),
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, group_id)
);

CREATE TABLE group_members (
    org_id     text NOT NULL,
    group_id   text NOT NULL,
    member_id  text NOT NULL,
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, group_id, member_id),
    FOREIGN KEY (org_id, group_id) REFERENCES groups (org_id, group_id) ON DELETE CASCADE,
    FOREIGN KEY (org_id, member_id) REFERENCES members (org_id, member_id)
);

-- Credit buckets. member_id NULL = the organization's shared pool.
CREATE TABLE credit_grants (
    org_id       text NOT NULL REFERENCES organizations (org_id),
    bucket_id    text NOT NULL CHECK (bucket_id <> ''),
    kind         text NOT NULL CHECK (kind IN ('seat', 'personal', 'shared', 'on_demand')),
    member_id    text,
    amount       bigint NOT NULL CHECK (amount > 0),
    valid_from   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    granted_at   timestamptz NOT NULL DEFAULT now(),
    source       text NOT NULL DEFAULT '',
    PRIMARY KEY (org_id, bucket_id),
    CHECK (expires_at > valid_from),
    CHECK ((kind = 'shared') = (member_id IS NULL)),
    FOREIGN KEY (org_id, member_id) REFERENCES members (org_id, member_id)
);
CREATE INDEX credit_grants_live ON credit_grants (org_id, expires_at);

-- API keys: only the SHA-256 of the token is stored. `admin` keys belong to no organization.
CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    scope       text NOT NULL CHECK (scope IN ('admin', 'org_admin', 'product')),
    org_id      text REFERENCES organizations (org_id),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((scope = 'admin') = (org_id IS NULL))
);
CREATE INDEX api_keys_org ON api_keys (org_id);

-- Voids requested through the API, with what the engine returned.
CREATE TABLE voids (
    org_id        text NOT NULL REFERENCES organizations (org_id),
    event_key     text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    voided        boolean NOT NULL,
    returned      jsonb NOT NULL DEFAULT '[]',
    requested_by  text NOT NULL DEFAULT '',
    PRIMARY KEY (org_id, event_key)
);
