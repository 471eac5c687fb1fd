//! sluice's integration tests: the real binary against real PostgreSQL, S3
//! and SMTP servers started by `scripts/test.sh`.

#[macro_use]
pub mod harness;

mod browser;
mod cli;
mod daemon;
mod data;
mod faults;
mod first_project;
mod into;
mod kpi;
mod machines;
mod mapping;
mod notifiers;
mod pools;
mod report;
mod rows;
mod runs;
mod secrets;
mod sensors;
mod shop;
mod tries;
mod validate;
mod web;
