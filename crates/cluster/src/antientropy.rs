//! Anti-entropy: two nodes find what one holds and the other lacks without
//! listing everything.
//!
//! Every recording a node knows has a *version* ([`Version`]): deleted
//! (a tombstone), present with its audio here, or present as metadata only
//! (the audio is elsewhere, not yet here). Recordings are bucketed by the
//! hour they started (UUIDv7 ids are time-ordered, and a recording never
//! moves between hours); each bucket has a count and a fingerprint, the XOR
//! of a 64-bit hash of every (id, version) in it — kept up to date in the
//! same transaction that changes a recording, in O(1) per change
//! (Tictac-style, as in Riak's kv_index_tictactree). Two nodes compare the
//! per-day sums, then the hours of the days that differ, then the item
//! lists of the hours that differ, and each pulls what the other has in a
//! better version. With recordings immutable once final, a node three
//! years old compares ~1,100 day rows and drills into the few that differ.
//!
//! Versions rank `Deleted > Audio > MetaOnly`: a tombstone always wins (a
//! deletion is never undone by a copy that was elsewhere), a copy with its
//! audio beats one without.

use std::collections::BTreeMap;

use model::RecordingId;

pub use model::replica::{fingerprint, hour_of, Bucket, Version, HOURS_PER_DAY, HOUR_MS};

/// Sums hour buckets into day buckets.
pub fn days(hours: &BTreeMap<i64, Bucket>) -> BTreeMap<i64, Bucket> {
    let mut out: BTreeMap<i64, Bucket> = BTreeMap::new();
    for (h, b) in hours {
        out.entry(h.div_euclid(HOURS_PER_DAY)).or_default().merge(*b);
    }
    out.retain(|_, b| b.count > 0 || b.fp != 0);
    out
}

/// Keys whose buckets differ between two sides (present on one side only counts).
pub fn differing(ours: &BTreeMap<i64, Bucket>, theirs: &BTreeMap<i64, Bucket>) -> Vec<i64> {
    let mut keys: Vec<i64> = ours.keys().chain(theirs.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter(|k| ours.get(k).copied().unwrap_or_default() != theirs.get(k).copied().unwrap_or_default())
        .collect()
}

/// What to take from a peer for one recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    pub id: RecordingId,
    pub version: Version,
}

/// Given both sides' items of the same buckets, what this node should take
/// from the peer: everything it lacks, and everything the peer holds in a
/// better version.
pub fn plan(ours: &BTreeMap<RecordingId, Version>, theirs: &BTreeMap<RecordingId, Version>) -> Vec<Pull> {
    theirs
        .iter()
        .filter(|(id, v)| match ours.get(id) {
            None => true,
            Some(mine) => v.supersedes(mine),
        })
        .map(|(id, v)| Pull { id: *id, version: v.clone() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn ids(n: usize, seed: u64) -> Vec<RecordingId> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let t0 = 1_764_000_000i64;
        (0..n)
            .map(|_| {
                let t = OffsetDateTime::from_unix_timestamp(t0 + rng.i64(0..30 * 86_400)).unwrap();
                RecordingId::new(t)
            })
            .collect()
    }

    fn started_ms(id: RecordingId) -> i64 {
        let (s, ns) = id.0.get_timestamp().unwrap().to_unix();
        s as i64 * 1000 + ns as i64 / 1_000_000
    }

    fn buckets(items: &BTreeMap<RecordingId, Version>) -> BTreeMap<i64, Bucket> {
        let mut out: BTreeMap<i64, Bucket> = BTreeMap::new();
        for (id, v) in items {
            out.entry(hour_of(started_ms(*id))).or_default().toggle(fingerprint(*id, v), true);
        }
        out
    }

    /// Two replicas that differ in a few items find exactly those by
    /// comparing days, then hours, then items of those hours.
    #[test]
    fn drilling_down_finds_exactly_the_differences() {
        let all = ids(5000, 1);
        let full: BTreeMap<RecordingId, Version> =
            all.iter().map(|id| (*id, Version::Audio(Some(format!("{id}"))))).collect();
        let mut partial = full.clone();
        let missing: Vec<RecordingId> = all.iter().step_by(997).copied().collect();
        for id in &missing {
            partial.remove(id);
        }
        let deleted = all[17];
        partial.insert(deleted, Version::Deleted);
        let meta_only = all[42];
        partial.insert(meta_only, Version::MetaOnly(Some(format!("{meta_only}"))));

        let (hours_full, hours_partial) = (buckets(&full), buckets(&partial));
        let diff_days = differing(&days(&hours_partial), &days(&hours_full));
        assert!(diff_days.len() <= missing.len() + 2);
        let diff_hours: Vec<i64> = differing(&hours_partial, &hours_full)
            .into_iter()
            .filter(|h| diff_days.contains(&h.div_euclid(HOURS_PER_DAY)))
            .collect();
        let in_hours = |m: &BTreeMap<RecordingId, Version>| -> BTreeMap<RecordingId, Version> {
            m.iter()
                .filter(|(id, _)| diff_hours.contains(&hour_of(started_ms(**id))))
                .map(|(k, v)| (*k, v.clone()))
                .collect()
        };
        let (p, f) = (in_hours(&partial), in_hours(&full));
        assert!(p.len() < 100, "only a few hours were listed: {}", p.len());

        let mut pulls: Vec<RecordingId> = plan(&p, &f).into_iter().map(|x| x.id).collect();
        pulls.sort();
        let mut want = missing.clone();
        want.push(meta_only);
        want.sort();
        assert_eq!(pulls, want, "the partial node pulls what it lacks and the audio it has no copy of");
        let back = plan(&f, &p);
        assert_eq!(back, vec![Pull { id: deleted, version: Version::Deleted }], "the full node takes the tombstone");
    }

    #[test]
    fn toggling_twice_restores_the_bucket_and_days_sum_hours() {
        let id = ids(1, 3)[0];
        let mut b = Bucket::default();
        let fp = fingerprint(id, &Version::Audio(None));
        b.toggle(fp, true);
        assert_ne!(b, Bucket::default());
        b.toggle(fp, false);
        assert_eq!(b, Bucket::default());
        assert_ne!(fingerprint(id, &Version::Audio(None)), fingerprint(id, &Version::Deleted));
        let mut hours = BTreeMap::new();
        hours.insert(24, Bucket { count: 1, fp: 5 });
        hours.insert(30, Bucket { count: 2, fp: 3 });
        assert_eq!(days(&hours), BTreeMap::from([(1, Bucket { count: 3, fp: 6 })]));
        assert_eq!(hour_of(-1), -1, "before 1970 still buckets consistently");
        assert!(Version::Deleted.supersedes(&Version::Audio(None)));
        assert!(!Version::MetaOnly(None).supersedes(&Version::Audio(None)));
    }
}
