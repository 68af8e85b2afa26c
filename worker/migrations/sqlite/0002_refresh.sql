-- OAuth refresh (docs/refresh.md). Portable: the other backend's file is the
-- same text with BYTEA for BLOB.

-- refresh_ct: the sealed refresh material (refresh token, client id, client
-- secret), sealed with the row's data key like token_ct. token_url: the
-- provider's token endpoint. access_expires_at: when the access token
-- expires (Unix seconds). generation: the fence, incremented by every lease
-- taken; a refresh commits only WHERE generation = the one it took.
-- lease_owner/lease_until: who holds the lease and until when (NULL: free).
-- status: 'active' or 'needs_reauth'.
ALTER TABLE credentials ADD COLUMN refresh_ct BLOB;
ALTER TABLE credentials ADD COLUMN token_url TEXT;
ALTER TABLE credentials ADD COLUMN access_expires_at BIGINT;
ALTER TABLE credentials ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE credentials ADD COLUMN lease_owner TEXT;
ALTER TABLE credentials ADD COLUMN lease_until BIGINT;
ALTER TABLE credentials ADD COLUMN status TEXT NOT NULL DEFAULT 'active';

-- Tokens a provider returned whose fenced commit failed (the lease was lost):
-- sealed with the credential's data key at the version named, kept so that
-- a replica that later gets invalid_grant can recover them.
CREATE TABLE orphans (
    id            TEXT    NOT NULL PRIMARY KEY,
    credential_id TEXT    NOT NULL,
    generation    BIGINT  NOT NULL,
    version       BIGINT  NOT NULL,
    key_id        TEXT    NOT NULL,
    wrapped_key   BLOB   NOT NULL,
    token_ct      BLOB   NOT NULL,
    refresh_ct    BLOB   NOT NULL,
    access_expires_at BIGINT,
    created_at    BIGINT  NOT NULL
);

CREATE INDEX orphans_credential_id ON orphans (credential_id);
