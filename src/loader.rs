//! Loading the DAG folder: the IO side of [`crate::dag`].
//!
//! Every `*.yaml`/`*.yml` file under the DAGs folder (recursively, skipping
//! hidden files) is parsed on its own, so one bad file never stops the other
//! DAGs from loading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::connections::Connections;
use crate::dag::Dag;
use crate::diag::{Diagnostic, Pos, Severity};
use crate::tasks::ValidationEnv;
use crate::template::Templates;

/// Where a project lives: `dags/`, `sql/`, `config/`, `reports/` under one root.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub dags_dir: PathBuf,
}

impl Project {
    /// The project whose DAGs are in `dags_dir`; its root is the folder that
    /// holds `dags_dir`.
    pub fn new(dags_dir: PathBuf) -> Project {
        let abs = std::path::absolute(&dags_dir).unwrap_or(dags_dir.clone());
        let root = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        Project { root, dags_dir }
    }
}

/// Reads project files for validation.
pub struct FsEnv<'a> {
    pub root: &'a Path,
    pub connections: &'a Connections,
}

impl ValidationEnv for FsEnv<'_> {
    fn read_file(&self, rel: &str) -> Result<String, String> {
        let path = self.root.join(rel);
        std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("file `{rel}` does not exist; paths are relative to the project root ({})", display_path(self.root).display())
            }
            _ => format!("cannot read `{rel}` ({}): {e}", display_path(&path).display()),
        })
    }
    fn connections(&self) -> &Connections {
        self.connections
    }
}

/// The DAGs of a project and everything wrong with them.
#[derive(Default)]
pub struct DagBag {
    pub dags: BTreeMap<String, Arc<Dag>>,
    /// Every diagnostic, errors and warnings, sorted.
    pub diagnostics: Vec<Diagnostic>,
    /// Files that did not load, with the DAG id they would have had.
    pub failed: BTreeMap<PathBuf, Option<String>>,
    pub files: Vec<PathBuf>,
}

impl DagBag {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn get(&self, dag_id: &str) -> Result<Arc<Dag>, String> {
        if let Some(d) = self.dags.get(dag_id) {
            return Ok(d.clone());
        }
        if let Some((file, _)) = self.failed.iter().find(|(_, id)| id.as_deref() == Some(dag_id)) {
            let problems: Vec<String> =
                self.diagnostics.iter().filter(|d| &d.file == file && d.is_error()).map(|d| d.to_string()).collect();
            return Err(format!("DAG `{dag_id}` ({}) has errors:\n{}", file.display(), problems.join("\n")));
        }
        let hint = crate::diag::hint(dag_id, self.dags.keys().map(String::as_str));
        Err(format!("no DAG `{dag_id}`{hint}; `sluice dags list` shows the DAGs"))
    }
}

/// Lists DAG files: each path is a file, or a folder searched recursively.
pub fn dag_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(format!("{} does not exist", p.display()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses a DAG file's text as it was (a run's stored version), with the
/// project's connections, as if it were at `file`.
pub fn parse_source(file: &Path, source: &str, root: &Path, connections: &Connections, templates: &Templates) -> crate::dag::parse::Parsed {
    let env = FsEnv { root, connections };
    crate::dag::parse::parse(&display_path(file), source, &env, templates)
}

/// Loads DAG files.
pub fn load(files: &[PathBuf], root: &Path, connections: &Connections, templates: &Templates) -> DagBag {
    let env = FsEnv { root, connections };
    let mut bag = DagBag { files: files.to_vec(), ..Default::default() };
    let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        let display = display_path(file);
        let source = match read_dag_file(file) {
            Ok(s) => s,
            Err((pos, message)) => {
                bag.diagnostics.push(Diagnostic { severity: Severity::Error, file: display.clone(), pos, path: String::new(), message });
                bag.failed.insert(display, None);
                continue;
            }
        };
        let parsed = crate::dag::parse::parse(&display, &source, &env, templates);
        bag.diagnostics.extend(parsed.diagnostics);
        match parsed.dag {
            Some(dag) => {
                if let Some(first) = origin.get(&dag.dag_id) {
                    bag.diagnostics.push(Diagnostic {
                        severity: Severity::Error,
                        file: display.clone(),
                        pos: Pos::START,
                        path: "dag_id".into(),
                        message: format!("DAG id `{}` is already used by {}", dag.dag_id, first.display()),
                    });
                    bag.failed.insert(display, Some(dag.dag_id.clone()));
                    continue;
                }
                origin.insert(dag.dag_id.clone(), display);
                bag.dags.insert(dag.dag_id.clone(), Arc::new(dag));
            }
            None => {
                bag.failed.insert(display, parsed.dag_id);
            }
        }
    }
    crate::diag::sort(&mut bag.diagnostics);
    bag
}

/// A DAG file's text, without a UTF-8 byte order mark. A byte that is not
/// UTF-8 is reported at its line and column.
pub fn read_dag_file(file: &Path) -> Result<String, (Pos, String)> {
    let bytes = std::fs::read(file).map_err(|e| (Pos::START, format!("cannot read the file: {e}")))?;
    let bytes = bytes.strip_prefix(crate::formats::BOM).unwrap_or(&bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let col = good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
            let byte = bytes[e.valid_up_to()];
            Err((
                Pos { line, col },
                format!(
                    "byte 0x{byte:02X} is not UTF-8; DAG files are UTF-8 text (save the file as UTF-8, e.g. `iconv -f cp949 -t utf-8`)"
                ),
            ))
        }
    }
}

/// Paths are shown relative to the current directory when they are under it.
pub fn display_path(p: &Path) -> PathBuf {
    let cwd = std::env::current_dir().ok();
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match cwd.and_then(|c| abs.strip_prefix(&c).ok().map(Path::to_path_buf)) {
        Some(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
        Some(rel) => rel,
        None => p.to_path_buf(),
    }
}
