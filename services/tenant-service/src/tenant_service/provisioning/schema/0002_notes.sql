-- The example "notes" app's table.
CREATE TABLE notes (
    id bigserial PRIMARY KEY,
    body text NOT NULL CHECK (length(body) <= 10000),
    created_at timestamptz NOT NULL DEFAULT now()
);
