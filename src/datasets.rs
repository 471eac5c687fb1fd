//! Datasets passed between tasks: Parquet files in the run's staging area.
//! Only a small summary goes into the state store.

use serde::{Deserialize, Serialize};

/// What the state store records about a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetSummary {
    /// Where the Parquet file is: a local path or `s3://bucket/key`.
    pub uri: String,
    pub rows: u64,
    pub bytes: u64,
    /// Column names and types.
    pub schema: Vec<(String, String)>,
}

/// A dataset a task reads.
pub type DatasetRef = DatasetSummary;
