//! sluice: a batch ETL orchestrator. See `docs/ARCHITECTURE.md` for the map.

pub mod actions;
pub mod cli;
pub mod connections;
pub mod daemon;
pub mod dag;
pub mod datasets;
pub mod diag;
pub mod formats;
pub mod generate;
pub mod loader;
pub mod logging;
pub mod mail;
pub mod pgcopy;
pub mod pgerror;
pub mod pgsetup;
pub mod pools;
pub mod process;
pub mod report;
pub mod resources;
pub mod runner;
pub mod s3;
pub mod secrets;
pub mod state;
pub mod tasks;
pub mod template;
pub mod web;
