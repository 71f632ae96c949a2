-- Recordings index. The JSON document next to each audio file is the
-- source of truth; these tables make it searchable.
CREATE TABLE recordings (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    source      TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,
    started_at  INTEGER NOT NULL, -- unix milliseconds
    ended_at    INTEGER,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    direction   TEXT,
    caller      TEXT,
    callee      TEXT,
    call_id     TEXT,
    audio_path  TEXT,
    audio_bytes INTEGER,
    sha256      TEXT,
    meta_json   TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX recordings_started_at ON recordings (started_at);
CREATE INDEX recordings_state ON recordings (state);

CREATE TABLE participants (
    recording_id TEXT NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    name         TEXT,
    aor          TEXT,
    number       TEXT,
    role         TEXT,
    channel      INTEGER,
    PRIMARY KEY (recording_id, position)
);
CREATE INDEX participants_number ON participants (number);

CREATE TABLE state_changes (
    recording_id TEXT NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    state        TEXT NOT NULL,
    at           INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    PRIMARY KEY (recording_id, seq)
);
