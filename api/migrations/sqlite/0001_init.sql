-- chokepoint-api store, version 1.
-- Portable SQL: the PostgreSQL migration is the same text with BIGSERIAL for
-- the queue's position and BYTEA for BLOB. Times are Unix milliseconds
-- (BIGINT); ids are text. The API never opens the worker's credential rows:
-- these are its own tables.

-- A conversation belongs to exactly one org, fixed at creation.
CREATE TABLE conversations (
    id          TEXT    NOT NULL PRIMARY KEY,
    org         TEXT    NOT NULL,
    created_by  TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);

-- A one-time WebSocket ticket: only the SHA-256 of the 256-bit ticket is
-- stored. Bound to user, org, conversation and Origin (NULL: none). It is
-- consumed by a conditional UPDATE of used_at, so it opens one socket.
CREATE TABLE tickets (
    hash         BLOB    NOT NULL PRIMARY KEY,
    sub          TEXT    NOT NULL,
    org          TEXT    NOT NULL,
    conversation TEXT    NOT NULL,
    origin       TEXT,
    token_exp    BIGINT  NOT NULL,
    token_iat    BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    used_at      BIGINT
);

CREATE INDEX tickets_expires_at ON tickets (expires_at);

-- The write queue. (conversation, client_id) is the idempotency key; pos
-- orders messages; a claim is a lease (lease_until) that returns the message
-- to the queue when it passes without an ack.
CREATE TABLE queue (
    pos          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    conversation TEXT    NOT NULL,
    client_id    TEXT    NOT NULL,
    org          TEXT    NOT NULL,
    sub          TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    lease_until  BIGINT,
    claims       BIGINT  NOT NULL DEFAULT 0,
    acked_at     BIGINT,
    UNIQUE (conversation, client_id)
);

CREATE INDEX queue_pending ON queue (acked_at, pos);
CREATE INDEX queue_conversation ON queue (conversation, pos);

-- Conversation events, already scrubbed, numbered per conversation.
CREATE TABLE events (
    conversation TEXT    NOT NULL,
    seq          BIGINT  NOT NULL,
    data         TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    PRIMARY KEY (conversation, seq)
);

-- Revocations: tokens of (org, sub) issued at or before not_after are
-- refused; sub = '*' revokes the whole org's membership.
CREATE TABLE revocations (
    org        TEXT    NOT NULL,
    sub        TEXT    NOT NULL,
    not_after  BIGINT  NOT NULL,
    PRIMARY KEY (org, sub)
);
