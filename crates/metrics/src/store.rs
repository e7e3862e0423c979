//! Raw samples in SQLite: one row per sandbox per sampling instant, one column per catalogue
//! metric. Lives in its own file (`metrics.db`) so sampling never contends with the metadata
//! store. Size is bounded by the retention window: [`SampleStore::prune`] drops older rows.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params_from_iter, Connection, OptionalExtension};
use thiserror::Error;

use crate::catalogue::{Metric, Sample};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("metrics store")]
    Sqlite(#[from] rusqlite::Error),
}

pub struct SampleStore {
    conn: Mutex<Connection>,
}

fn columns() -> String {
    Metric::ALL
        .iter()
        .map(|m| m.key())
        .collect::<Vec<_>>()
        .join(", ")
}

impl SampleStore {
    /// Opens (creating) the store at `path`; `:memory:` for tests.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS samples (
                sandbox TEXT NOT NULL,
                ts_ms INTEGER NOT NULL,
                PRIMARY KEY (sandbox, ts_ms)
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts_ms);",
        )?;
        // Columns follow the catalogue; a metric added later is a new nullable column.
        let have: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('samples')")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for m in Metric::ALL {
            if !have.iter().any(|c| c == m.key()) {
                conn.execute_batch(&format!("ALTER TABLE samples ADD COLUMN {} REAL", m.key()))?;
            }
        }
        Ok(SampleStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one row per sandbox taken at `ts_ms`, in one transaction.
    pub fn record(&self, ts_ms: i64, rows: &[(String, Sample)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let marks = vec!["?"; Metric::COUNT + 2].join(", ");
            let mut st = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO samples (sandbox, ts_ms, {}) VALUES ({marks})",
                columns()
            ))?;
            for (id, s) in rows {
                let mut vals: Vec<rusqlite::types::Value> = Vec::with_capacity(Metric::COUNT + 2);
                vals.push(id.clone().into());
                vals.push(ts_ms.into());
                vals.extend(
                    s.iter()
                        .map(|v| v.map_or(rusqlite::types::Value::Null, Into::into)),
                );
                st.execute(params_from_iter(vals))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Rows of `sandbox` with `from_ms <= ts_ms <= to_ms`, oldest first.
    pub fn range(
        &self,
        sandbox: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, Sample)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT ts_ms, {} FROM samples WHERE sandbox = ?1 AND ts_ms BETWEEN ?2 AND ?3
             ORDER BY ts_ms",
            columns()
        ))?;
        let rows = st.query_map(rusqlite::params![sandbox, from_ms, to_ms], |r| {
            let mut s: Sample = [None; Metric::COUNT];
            for (i, v) in s.iter_mut().enumerate() {
                *v = r.get(i + 1)?;
            }
            Ok((r.get(0)?, s))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest recorded value of one metric of a sandbox.
    pub fn last(&self, sandbox: &str, m: Metric) -> Result<Option<f64>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {k} FROM samples WHERE sandbox = ?1 AND {k} IS NOT NULL
                     ORDER BY ts_ms DESC LIMIT 1",
                    k = m.key()
                ),
                [sandbox],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Drops rows older than `before_ms` and rows of sandboxes not in `keep`; returns how many.
    pub fn prune(&self, before_ms: i64, keep: &[String]) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut n = tx.execute("DELETE FROM samples WHERE ts_ms < ?1", [before_ms])?;
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS keep (id TEXT PRIMARY KEY); DELETE FROM keep;",
        )?;
        {
            let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO keep (id) VALUES (?1)")?;
            for id in keep {
                ins.execute([id])?;
            }
        }
        n += tx.execute(
            "DELETE FROM samples WHERE sandbox NOT IN (SELECT id FROM keep)",
            [],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Bytes the database holds (pages in use).
    pub fn bytes(&self) -> Result<u64, StoreError> {
        let conn = self.conn();
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok((pages * size) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cpu: f64) -> Sample {
        let mut s: Sample = [None; Metric::COUNT];
        s[Metric::CpuUsageCores as usize] = Some(cpu);
        s[Metric::Phase as usize] = Some(1.0);
        s
    }

    #[test]
    fn records_ranges_and_prunes() {
        let st = SampleStore::open(Path::new(":memory:")).unwrap();
        for t in 0..10 {
            st.record(
                t * 1000,
                &[("a".into(), row(t as f64)), ("b".into(), row(-1.0))],
            )
            .unwrap();
        }
        let r = st.range("a", 2000, 4000).unwrap();
        assert_eq!(
            r.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [2000, 3000, 4000]
        );
        assert_eq!(r[0].1[Metric::CpuUsageCores as usize], Some(2.0));
        assert_eq!(r[0].1[Metric::MemoryUsageBytes as usize], None);
        assert_eq!(st.last("a", Metric::CpuUsageCores).unwrap(), Some(9.0));
        assert_eq!(st.last("a", Metric::MemoryUsageBytes).unwrap(), None);
        assert_eq!(st.last("zz", Metric::Phase).unwrap(), None);
        // Older than 5 s: 5 rows of a, 5 of b; then b is forgotten entirely.
        assert_eq!(st.prune(5000, &["a".into()]).unwrap(), 15);
        assert_eq!(st.range("a", 0, 100_000).unwrap().len(), 5);
        assert!(st.range("b", 0, 100_000).unwrap().is_empty());
        assert!(st.bytes().unwrap() > 0);
    }

    #[test]
    fn reopening_keeps_samples_and_adds_missing_columns() {
        let dir = std::env::temp_dir().join(format!("sbx-metrics-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("metrics.db");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(
                "CREATE TABLE samples (sandbox TEXT NOT NULL, ts_ms INTEGER NOT NULL,
                 cpu_usage_cores REAL, PRIMARY KEY (sandbox, ts_ms)) WITHOUT ROWID;
                 INSERT INTO samples VALUES ('a', 1, 0.5);",
            )
            .unwrap();
        }
        let st = SampleStore::open(&p).unwrap();
        let r = st.range("a", 0, 10).unwrap();
        assert_eq!(r[0].1[Metric::CpuUsageCores as usize], Some(0.5));
        assert_eq!(r[0].1[Metric::OomKills as usize], None);
        st.record(2, &[("a".into(), row(1.0))]).unwrap();
        drop(st);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
