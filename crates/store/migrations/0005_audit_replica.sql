-- The audit trails of the other nodes, copied here entry by entry (each
-- copy checked against its chain before it is stored), so an auditor on
-- any node can search every node's trail and a lost node's trail survives.
CREATE TABLE audit_replica (
    node      TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    client    TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    PRIMARY KEY (node, seq)
);
CREATE INDEX audit_replica_at ON audit_replica (node, at);
CREATE TRIGGER audit_replica_no_update BEFORE UPDATE ON audit_replica BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_replica_no_delete BEFORE DELETE ON audit_replica BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
