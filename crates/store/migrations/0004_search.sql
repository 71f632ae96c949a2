-- Search that stays fast over millions of recordings.

-- 1 on the copy search lists for its call (of the copies sharing a call
-- key: completed first, then active, then the longest), kept up to date on
-- every write instead of being worked out per row of every search.
ALTER TABLE recordings ADD COLUMN listed INTEGER NOT NULL DEFAULT 1;
UPDATE recordings SET listed = (id = (SELECT r2.id FROM recordings r2 WHERE r2.call_key = recordings.call_key
    ORDER BY CASE r2.state WHEN 'completed' THEN 0 WHEN 'active' THEN 1 WHEN 'interrupted' THEN 2 ELSE 3 END,
             r2.duration_ms DESC, r2.node_id, r2.id LIMIT 1))
WHERE call_key IS NOT NULL;
CREATE INDEX recordings_listed_started ON recordings (listed, started_at, id);

-- Party substrings (numbers, names, addresses) through a trigram index:
-- any substring of three characters or more is found without a scan.
-- Contentless: it holds the index only; rowid is the recording's rowid.
CREATE VIRTUAL TABLE recordings_fts USING fts5(parties, tokenize = 'trigram', content = '', contentless_delete = 1);
INSERT INTO recordings_fts (rowid, parties)
SELECT r.rowid, coalesce(r.caller, '') || ' ' || coalesce(r.callee, '') || ' ' ||
       coalesce((SELECT group_concat(coalesce(p.name, '') || ' ' || coalesce(p.number, '') || ' ' || coalesce(p.aor, ''), ' ')
                 FROM participants p WHERE p.recording_id = r.id), '')
FROM recordings r;
