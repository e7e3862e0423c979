//! Observability of sandboxd.
//!
//! - [`catalogue`]: the bounded v1 set of per-sandbox series (key, unit, how a bucket is
//!   aggregated) and the phase codes of the `phase` series.
//! - [`sample`]: turns raw host readings into one row of samples (CPU time → cores).
//! - [`store`]: raw samples in SQLite (`metrics.db`), pruned past the retention window.
//! - [`series`]: query windows: `step` parsing and clamping, downsampling to buckets.
//! - [`prom`]: counters, gauges and histograms in the Prometheus text format.
//!
//! Nothing here does I/O on sandboxes; the daemon's sampler reads the host and calls in.
//!
//! Adding a series (e.g. `egress_denied_total` once per-sandbox egress counters exist): a
//! [`Metric`] variant with its key, unit and aggregation, a [`sample::HostReading`] field the
//! sampler fills, and one line in [`sample::Tracker::sample`]. The store adds the column on
//! its next open; older rows read it as absent.

pub mod catalogue;
pub mod prom;
pub mod sample;
pub mod series;
pub mod store;

use std::time::Duration;

pub use catalogue::{Metric, Sample};
pub use prom::Registry;
pub use store::{SampleStore, StoreError};

/// What the API and the sampler share: the sample store, the platform's Prometheus registry,
/// and the sampling settings that bound queries.
pub struct Hub {
    pub store: SampleStore,
    pub registry: Registry,
    /// How often sandboxes are sampled; the finest `step` a query gets.
    pub interval: Duration,
    /// How long raw samples are kept.
    pub retention: Duration,
}
