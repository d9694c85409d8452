//! The change feed from the SQLite file: a full load, and the delta after a position,
//! each in one read transaction (one consistent view of the file).

use super::super::feed::{continuation, CredentialChange, Delta, Feed, Position};
use super::super::{Loaded, Result};
use super::rows::*;
use super::Inner;
use crate::acl::SnapshotBuilder;

/// Credentials read per query when a delta names many.
const IDS_PER_QUERY: usize = 500;

impl Inner {
    pub(super) fn load(&self) -> Result<Loaded> {
        self.read(|tx| {
            let (store_id, version, _) = read_meta(tx)?;
            let stamp = if version == 0 {
                0
            } else {
                stamp_at(tx, version)?.unwrap_or(0)
            };
            let count: i64 = tx.query_row("SELECT COUNT(*) FROM credentials", [], |r| r.get(0))?;
            let mut builder = SnapshotBuilder::new(version, count as usize);
            let mut damaged = Vec::new();
            stored_credentials(tx, None, |stored| match stored.into_change() {
                CredentialChange::Readable(key, c) => builder.insert(key, c),
                broken => {
                    if let Some((key, c)) = broken.entry(None) {
                        builder.insert(key, c);
                    }
                    damaged.push(broken);
                }
            })?;
            Ok(Loaded {
                snapshot: builder.build(),
                position: Position {
                    store_id,
                    version,
                    stamp,
                },
                damaged,
            })
        })
    }

    pub(super) fn changes_since(&self, at: Position) -> Result<Feed> {
        self.read(|tx| {
            let (store_id, version, pruned) = read_meta(tx)?;
            let stamp = if at.version == 0 {
                None
            } else {
                stamp_at(tx, at.version)?
            };
            if let Some(reason) = continuation(&at, store_id, version, pruned, stamp) {
                return Ok(Feed::Resync(reason));
            }
            if version == at.version {
                return Ok(Feed::Unchanged);
            }
            let (committed, ids, last_stamp) = changes_after(tx, at.version)?;
            let mut changed = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(IDS_PER_QUERY) {
                stored_credentials(tx, Some(chunk), |s| changed.push(s.into_change()))?;
            }
            Ok(Feed::Changes(Delta {
                to: Position {
                    store_id,
                    version,
                    stamp: last_stamp.unwrap_or(0),
                },
                changed,
                committed,
            }))
        })
    }
}
