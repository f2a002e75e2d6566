-- Reporting: the totals the read API and the CSV export are served from (meter/reports/).
--
-- Kept in step with `settlements` by meter/store.py, in the same transaction and from the same
-- staged rows as the totals of 0002. Reports never scan `settlements`.
-- Amounts are integer micro-credits; `billing_group` '' is the built-in Unassigned group.

-- Usage of a member attributed to one billing group in one period. A member reassigned
-- mid-period has one row per group it was attributed to: the CSV export reads this table.
CREATE TABLE member_group_period_totals (
    org_id         text        NOT NULL,
    period_start   timestamptz NOT NULL,
    billing_group  text        NOT NULL,
    member_id      text        NOT NULL,
    period_end     timestamptz NOT NULL,
    events         bigint      NOT NULL DEFAULT 0,
    credits        bigint      NOT NULL DEFAULT 0,
    seat           bigint      NOT NULL DEFAULT 0,
    personal       bigint      NOT NULL DEFAULT 0,
    shared         bigint      NOT NULL DEFAULT 0,
    on_demand      bigint      NOT NULL DEFAULT 0,
    unfunded       bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, period_start, billing_group, member_id)
);

-- One member's groups in a period (member detail, member pages filtered by group use the PK).
CREATE INDEX member_group_period_totals_member
    ON member_group_period_totals (org_id, member_id, period_start);

-- Daily totals per organization, by the UTC day of the event time (the sum of
-- member_daily_totals over the organization's members, without reading them).
CREATE TABLE org_daily_totals (
    org_id     text   NOT NULL,
    day        date   NOT NULL,
    events     bigint NOT NULL DEFAULT 0,
    credits    bigint NOT NULL DEFAULT 0,
    seat       bigint NOT NULL DEFAULT 0,
    personal   bigint NOT NULL DEFAULT 0,
    shared     bigint NOT NULL DEFAULT 0,
    on_demand  bigint NOT NULL DEFAULT 0,
    unfunded   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, day)
);

-- Member pages of a period walk member ids in order (keyset pagination).
CREATE INDEX member_period_totals_page
    ON member_period_totals (org_id, period_start, member_id);

-- Current members of an organization in member id order (the current period lists them all).
CREATE INDEX members_active_page ON members (org_id, member_id) WHERE status = 'active';
