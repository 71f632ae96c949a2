-- The cluster: replicas, anti-entropy buckets, tombstones, the replication
-- outbox, cluster settings and the peers a node learnt about.

-- The same call recorded on several nodes shares a call key (SIPREC
-- session, BiB call reference, or Call-ID and source); search shows one.
ALTER TABLE recordings ADD COLUMN call_key TEXT;
-- 1 when this node holds the recording's verified audio, 0 when only its
-- metadata arrived so far (the audio is on another node).
ALTER TABLE recordings ADD COLUMN audio_here INTEGER NOT NULL DEFAULT 1;
CREATE INDEX recordings_call_key ON recordings (call_key);

-- Per-hour anti-entropy buckets: count and XOR of the fingerprints of the
-- final recordings and tombstones started in that hour (model::replica).
CREATE TABLE buckets (
    hour  INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    fp    INTEGER NOT NULL
);

-- Deleted recordings: a tombstone outranks any copy, so nothing comes back.
CREATE TABLE tombstones (
    id         TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    deleted_at INTEGER NOT NULL,
    stamp      TEXT NOT NULL,
    reason     TEXT NOT NULL
);
CREATE INDEX tombstones_deleted_at ON tombstones (deleted_at);

-- The replication outbox: one row per (target, lane, recording) until the
-- target confirmed a verified copy. Kept small on purpose (bytes per item
-- are measured by the benchmark).
CREATE TABLE outbox (
    target      TEXT NOT NULL,
    lane        INTEGER NOT NULL,
    id          TEXT NOT NULL,
    due_at      INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    PRIMARY KEY (target, lane, id)
) WITHOUT ROWID;
CREATE INDEX outbox_due ON outbox (target, due_at);

-- Cluster settings, last writer wins on the hybrid-clock stamp.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    stamp TEXT NOT NULL
);

-- Peers that announced themselves (configured seeds come from the config).
CREATE TABLE peers (
    url      TEXT PRIMARY KEY,
    added_at INTEGER NOT NULL
);

-- Nodes ever heard from: recordings are queued for them even while they
-- are down (and right after a restart, before the first heartbeat).
CREATE TABLE known_nodes (
    node_id    TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL
);
