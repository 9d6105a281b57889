-- User profiles, projected from identity's events. The users service's own table: it never
-- reads identity's. `version` is identity's version of the user; a row only moves forward.
CREATE TABLE users_profiles (
    id UUID PRIMARY KEY,
    email TEXT NOT NULL,
    username TEXT,
    display_name TEXT,
    avatar_url TEXT,
    version BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
