-- Leases: which replica of a singleton role (the scheduler) is active.
-- A holder renews its row before `expires_at`; any other replica may take a row whose
-- `expires_at` has passed. Times are PostgreSQL's own clock, so replicas need no synchronised clocks.
CREATE TABLE leases (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
