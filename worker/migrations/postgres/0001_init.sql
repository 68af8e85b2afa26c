-- chokepoint worker store, version 1.
-- Portable SQL: the SQLite migration is the same text with BLOB for BYTEA.
-- Times are Unix seconds (BIGINT); ids are lowercase hex text.

-- One credential per (org, integration). Secret fields are AES-256-GCM blobs
-- sealed with the row's data key; the data key is wrapped by the master key
-- named in key_id. The associated data binds each blob to (org, id, field,
-- version): `version` changes on every rewrite of the secret fields.
CREATE TABLE credentials (
    id              TEXT    NOT NULL PRIMARY KEY,
    org             TEXT    NOT NULL,
    integration     TEXT    NOT NULL,
    header_name     TEXT    NOT NULL,
    header_template TEXT    NOT NULL,
    key_id          TEXT    NOT NULL,
    wrapped_key     BYTEA   NOT NULL,
    token_ct        BYTEA   NOT NULL,
    version         BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    UNIQUE (org, integration)
);

-- A run: an agent's session. Its integrations (a JSON array of names) are
-- its write set. A run is alive while revoked_at IS NULL and now < expires_at.
CREATE TABLE runs (
    id           TEXT    NOT NULL PRIMARY KEY,
    org          TEXT    NOT NULL,
    integrations TEXT    NOT NULL,
    ttl_secs     BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    revoked_at   BIGINT,
    created_at   BIGINT  NOT NULL
);

CREATE INDEX runs_expires_at ON runs (expires_at);

-- A handle: only its keyed hash (HMAC-SHA256) is stored. It is valid while
-- its run is alive; revoking the run deletes its handles.
CREATE TABLE handles (
    hash          BYTEA   NOT NULL PRIMARY KEY,
    run_id        TEXT    NOT NULL REFERENCES runs (id),
    org           TEXT    NOT NULL,
    integration   TEXT    NOT NULL,
    credential_id TEXT    NOT NULL REFERENCES credentials (id)
);

CREATE INDEX handles_run_id ON handles (run_id);
CREATE INDEX handles_credential_id ON handles (credential_id);
