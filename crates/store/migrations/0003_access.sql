-- Search and access: the user part of every party of a recording (what a
-- user's scope is matched against), the identifiers operators match CDRs
-- with, sign-in sessions and the hash-chained audit trail.

CREATE TABLE parties (
    recording_id TEXT NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    party        TEXT NOT NULL,
    PRIMARY KEY (recording_id, party)
) WITHOUT ROWID;
CREATE INDEX parties_party ON parties (party, recording_id);

CREATE TABLE identifiers (
    recording_id TEXT NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    value        TEXT NOT NULL,
    PRIMARY KEY (recording_id, value)
) WITHOUT ROWID;
CREATE INDEX identifiers_value ON identifiers (value);

-- Keyset pagination walks this index newest first.
CREATE INDEX recordings_started_id ON recordings (started_at, id);

-- Sign-in sessions of this node. Only the SHA-256 of the cookie value is
-- stored, so a copy of the database signs nobody in.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    client     TEXT NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_username ON sessions (username);

-- The audit trail: append-only, each entry chained to the one before by
-- its hash (model::access::audit_hash), verified by `callvault audit verify`.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    client    TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_actor ON audit (actor, seq);
-- Append-only for the application; whoever edits the file directly (and
-- drops these) is caught by the chain.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
