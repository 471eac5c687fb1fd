//! Datasets passed between tasks: Parquet files in the run's staging area,
//! `{staging}/{dag_id}/{run_id}/{name}.parquet`. The staging area is a local
//! folder (default `.sluice/staging` under the project) or an S3 prefix
//! (`SLUICE_STAGING=s3://bucket/prefix`, with the S3 connection named by
//! `SLUICE_STAGING_CONN`, default `staging`).
//!
//! A dataset is never half-written: it is written under a temporary name in
//! the same folder and renamed when complete (local), or uploaded as one
//! object, which S3 makes visible only once complete. Only a small summary
//! (row count, schema, bytes, location) goes into the state store.

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::s3::S3Uri;

/// What the state store records about a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetSummary {
    /// Where the Parquet file is: a local path or `s3://bucket/key`.
    pub uri: String,
    pub rows: u64,
    pub bytes: u64,
    /// Column names and types.
    pub schema: Vec<(String, String)>,
    /// Where each row came from (an extract's source files and lines), as a
    /// file next to the dataset: see [`crate::formats::Lineage`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
}

/// A dataset a task reads.
pub type DatasetRef = DatasetSummary;

/// Bad rows of an extract or transform, by reason, and where they are kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RejectsSummary {
    pub total: u64,
    pub by_reason: std::collections::BTreeMap<String, u64>,
    /// The `_rejects` dataset, when quarantined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetSummary>,
}

/// Where datasets live.
#[derive(Debug, Clone)]
pub enum Staging {
    Local(PathBuf),
    S3 { root: S3Uri, conn: String },
}

impl Staging {
    /// From `SLUICE_STAGING` / `SLUICE_STAGING_CONN`, or the default folder.
    pub fn from_env(project_root: &Path) -> Result<Staging, String> {
        match std::env::var("SLUICE_STAGING").ok().filter(|s| !s.is_empty()) {
            Some(s) if s.starts_with("s3://") => {
                let root = S3Uri::parse(&s).map_err(|e| format!("{e}; write SLUICE_STAGING=s3://bucket/prefix"))?;
                Ok(Staging::S3 { root, conn: std::env::var("SLUICE_STAGING_CONN").unwrap_or_else(|_| "staging".into()) })
            }
            Some(s) if s.contains("://") || s.starts_with("s3:") => Err(format!(
                "`{s}` is neither an s3://bucket/prefix nor a folder; datasets can be staged on S3 (s3://...) or in a local folder"
            )),
            Some(s) => Ok(Staging::Local(project_root.join(s))),
            None => Ok(Staging::Local(project_root.join(".sluice/staging"))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Staging::Local(p) => p.display().to_string(),
            Staging::S3 { root, conn } => format!("{root} (connection {conn})"),
        }
    }
}

/// The polars type name as shown in summaries.
pub fn dtype_name(d: &DataType) -> String {
    match d {
        DataType::Datetime(_, Some(_)) => "timestamptz".into(),
        DataType::Datetime(_, None) => "timestamp".into(),
        DataType::Decimal(p, s) => format!("decimal({p},{s})"),
        DataType::String => "text".into(),
        other => other.to_string(),
    }
}

pub fn schema_of(schema: &polars::prelude::Schema) -> Vec<(String, String)> {
    schema.iter().map(|(n, d)| (n.to_string(), dtype_name(d))).collect()
}

/// Staged datasets live for one run: LZ4 compresses them well enough at a
/// fraction of zstd's cost (zstd took a tenth of a CSV extract's time).
const STAGING_COMPRESSION: ParquetCompression = ParquetCompression::Lz4Raw;

/// Writes a Parquet file batch by batch, under a temporary name. Encoding
/// and compression happen on a thread of their own, so that the reader
/// parses the next batch meanwhile.
pub struct DatasetWriter {
    pub tmp: PathBuf,
    batches: Option<std::sync::mpsc::SyncSender<DataFrame>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    pub rows: u64,
    pub schema: polars::prelude::Schema,
}

impl DatasetWriter {
    pub fn create(tmp: PathBuf, schema: polars::prelude::Schema) -> Result<DatasetWriter, String> {
        if let Some(dir) = tmp.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let file = File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let mut writer = ParquetWriter::new(file)
            .with_compression(STAGING_COMPRESSION)
            .batched(&schema)
            .map_err(|e| format!("cannot start writing {}: {e}", tmp.display()))?;
        // Two batches in flight bound the memory to a few batches.
        let (tx, rx) = std::sync::mpsc::sync_channel::<DataFrame>(2);
        let name = tmp.display().to_string();
        let thread = std::thread::Builder::new()
            .name("dataset-writer".into())
            .spawn(move || {
                for mut df in rx {
                    // A batch of typed chunks is one row group, not one per chunk.
                    df.rechunk_mut();
                    writer.write_batch(&df).map_err(|e| format!("writing {name}: {e}"))?;
                }
                writer.finish().map_err(|e| format!("finishing {name}: {e}"))?;
                Ok(())
            })
            .map_err(|e| format!("cannot start a writer thread: {e}"))?;
        Ok(DatasetWriter { tmp, batches: Some(tx), thread: Some(thread), rows: 0, schema })
    }

    pub fn write(&mut self, df: &DataFrame) -> Result<(), String> {
        self.rows += df.height() as u64;
        let sent = self.batches.as_ref().is_some_and(|tx| tx.send(df.clone()).is_ok());
        if sent {
            return Ok(());
        }
        // The thread stopped: its error says why.
        Err(self.join().err().unwrap_or_else(|| format!("writing {}: the writer stopped", self.tmp.display())))
    }

    fn join(&mut self) -> Result<(), String> {
        self.batches.take();
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| format!("writing {}: the writer thread panicked", self.tmp.display()))?,
            None => Ok(()),
        }
    }

    /// Finishes the file; returns its temporary path.
    pub fn finish(mut self) -> Result<(PathBuf, u64, polars::prelude::Schema), String> {
        self.join()?;
        Ok((std::mem::take(&mut self.tmp), self.rows, std::mem::take(&mut self.schema)))
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        // An abandoned writer (a failed extract) still stops its thread.
        let _ = self.join();
    }
}

/// Writes a whole DataFrame to a temporary Parquet file.
pub fn write_frame(tmp: &Path, df: &mut DataFrame) -> Result<(), String> {
    if let Some(dir) = tmp.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let file = File::create(tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    ParquetWriter::new(file).with_compression(STAGING_COMPRESSION).finish(df).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    Ok(())
}

/// Reads a local Parquet file lazily.
pub fn scan(path: &Path) -> PolarsResult<LazyFrame> {
    LazyFrame::scan_parquet(PlRefPath::new(path.to_string_lossy().as_ref()), ScanArgsParquet::default())
}

/// A local Parquet file read in frames of whole row groups, about
/// [`crate::formats::BATCH_ROWS`] rows each: a load streams them into COPY
/// instead of holding the dataset in memory.
pub struct Batches {
    path: PathBuf,
    metadata: polars::io::parquet::metadata::FileMetadataRef,
    /// Where each frame starts and how many rows it has.
    slices: std::vec::IntoIter<(usize, usize)>,
    read: usize,
}

/// Opens a local Parquet file for [`Batches`]; returns an empty frame of
/// its columns too.
pub fn batches(path: &Path) -> Result<(DataFrame, Batches), String> {
    let open = || File::open(path).map_err(|e| format!("cannot open dataset {}: {e}", path.display()));
    let mut reader = ParquetReader::new(open()?);
    let metadata = reader.get_metadata().map_err(|e| format!("cannot read dataset {}: {e}", path.display()))?.clone();
    let columns = reader.with_slice(Some((0, 0))).finish().map_err(|e| format!("cannot read dataset {}: {e}", path.display()))?;
    let mut slices = Vec::new();
    let mut start = 0;
    let mut len = 0;
    for rg in &metadata.row_groups {
        len += rg.num_rows();
        if len >= crate::formats::BATCH_ROWS {
            slices.push((start, len));
            start += len;
            len = 0;
        }
    }
    if len > 0 {
        slices.push((start, len));
    }
    Ok((columns, Batches { path: path.to_path_buf(), metadata, slices: slices.into_iter(), read: 0 }))
}

impl Iterator for Batches {
    type Item = Result<DataFrame, String>;

    /// The next frame; after the last, an error if the frames did not hold
    /// every row the file's footer counts.
    fn next(&mut self) -> Option<Result<DataFrame, String>> {
        let path = &self.path;
        let Some((start, len)) = self.slices.next() else {
            let total = self.metadata.num_rows;
            if self.read == total {
                return None;
            }
            let e = format!(
                "rows are unaccounted for: dataset {} holds {total} rows but {} were read (a bug in sluice)",
                path.display(),
                self.read
            );
            self.read = total;
            return Some(Err(e));
        };
        let frame = File::open(path).map_err(|e| format!("cannot open dataset {}: {e}", path.display())).and_then(|f| {
            let mut reader = ParquetReader::new(f).with_slice(Some((start, len)));
            reader.set_metadata(self.metadata.clone());
            reader.finish().map_err(|e| format!("cannot read dataset {}: {e}", path.display()))
        });
        if let Ok(df) = &frame {
            self.read += df.height();
        }
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(from: i64, n: i64) -> DataFrame {
        df!("id" => (from..from + n).collect::<Vec<i64>>(), "name" => (from..from + n).map(|i| format!("n{i}")).collect::<Vec<_>>())
            .unwrap()
    }

    /// Reads `path` with [`batches`]: the frames' heights and all their rows.
    fn read_in_batches(path: &Path) -> (Vec<usize>, DataFrame) {
        let (columns, frames) = batches(path).unwrap();
        let frames: Vec<DataFrame> = frames.map(Result::unwrap).collect();
        let heights = frames.iter().map(DataFrame::height).collect();
        let all = frames.into_iter().fold(columns, |mut a, b| {
            a.vstack_mut_owned(b).unwrap();
            a
        });
        (heights, all)
    }

    #[test]
    fn a_dataset_is_read_in_frames_of_whole_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        // Row groups of 10,000 rows (one per batch written) come together
        // in frames of at least BATCH_ROWS.
        let small = dir.path().join("small.parquet");
        let mut w = DatasetWriter::create(small.clone(), frame(0, 0).schema().as_ref().clone()).unwrap();
        for i in 0..15 {
            w.write(&frame(i * 10_000, 10_000)).unwrap();
        }
        w.finish().unwrap();
        let (heights, all) = read_in_batches(&small);
        assert_eq!(heights, [70_000, 70_000, 10_000]);
        assert!(all.equals(&frame(0, 150_000)));
        // One frame written whole, and an empty one.
        for n in [200_000, 0] {
            let whole = dir.path().join(format!("whole{n}.parquet"));
            write_frame(&whole, &mut frame(0, n)).unwrap();
            let (heights, all) = read_in_batches(&whole);
            assert_eq!(heights.iter().sum::<usize>(), n as usize);
            assert!(all.equals(&frame(0, n)));
            assert_eq!(all.schema(), frame(0, 0).schema());
        }
        // Frames that miss rows of the file end in an error, not silently.
        let (_, mut b) = batches(&small).unwrap();
        let mut slices: Vec<_> = b.slices.collect();
        slices.remove(1);
        b.slices = slices.into_iter();
        let ends: Vec<Result<usize, String>> = b.map(|f| f.map(|df| df.height())).collect();
        assert_eq!(ends[..2], [Ok(70_000), Ok(10_000)]);
        let e = ends[2].clone().unwrap_err();
        assert!(e.contains("holds 150000 rows but 80000 were read"), "{e}");
        assert_eq!(ends.len(), 3);
    }
}
