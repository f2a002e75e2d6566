-- Rate cards (meter/rating/README.md): versioned, effective-dated prices per model and dimension,
-- attached to a plan, or to one organization on that plan (an override, which replaces the plan's
-- card for it). A version is immutable: no route edits one, and the trigger refuses UPDATE and
-- DELETE, so a settlement's `rating.card_version` always names the prices it was rated with.
-- `body` is the card's content: {"unknown_model": "error" | "default", "default": {...},
-- "models": {"<rule>": {"<dimension>": {"micros_per_unit" | "micros_per_million": n}}}}.
CREATE TABLE rate_cards (
    version         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plan_id         text NOT NULL REFERENCES plans (plan_id),
    org_id          text REFERENCES organizations (org_id),
    effective_from  timestamptz NOT NULL,
    body            jsonb NOT NULL CHECK (jsonb_typeof(body) = 'object'),
    note            text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rate_cards_scope ON rate_cards (plan_id, org_id, effective_from);

CREATE FUNCTION rate_cards_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rate card versions are immutable: create a new version'
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER rate_cards_immutable BEFORE UPDATE OR DELETE ON rate_cards
    FOR EACH ROW EXECUTE FUNCTION rate_cards_immutable();

-- How a usage event was rated: card version, model rule and per-dimension lines (NULL for an
-- event that carried credits). Added, not recreated: the table may be partitioned.
ALTER TABLE settlements ADD COLUMN rating jsonb;
